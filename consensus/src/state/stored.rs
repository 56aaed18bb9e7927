//! How a [`StoredResponse`] is encoded, so that every version reads what the ones before
//! wrote. Bincode writes a struct's fields one after the other, without names or a count:
//! a field added at the end would be read from the next record's bytes, and
//! `#[serde(default)]` never applies. So the fields of the first version keep their
//! places, and the one byte its last field (`incomplete: bool`) took says what follows:
//! 0 or 1 (false or true), nothing more, as the first version wrote it; 2 or 3 (bit 0 is
//! `incomplete`), the function calls of the conversation. A response without calls is
//! written exactly as the first version wrote it. This holds for the log's and
//! snapshots' encoding (variable-length integers) and for backups' (fixed-length): a
//! `u8` is one byte in both.

use std::borrow::Cow;

use serde::de::{Error as _, SeqAccess, Unexpected, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{FunctionCall, StoredResponse, Turn, TurnTools};

/// A stored response as it is written: the first version's fields in their order, then
/// [`Later`] where its `incomplete` was.
#[derive(Serialize, Deserialize)]
#[serde(rename = "StoredResponse")]
struct Wire<'a> {
    id: Cow<'a, str>,
    owner: Cow<'a, str>,
    model: Cow<'a, str>,
    previous: Cow<'a, Option<String>>,
    created_ms: u64,
    input: Cow<'a, [Turn]>,
    output: Cow<'a, str>,
    input_tokens: u64,
    output_tokens: u64,
    spoke: Cow<'a, str>,
    later: Later<'a>,
}

/// `incomplete`, and since the second version the function calls.
struct Later<'a> {
    incomplete: bool,
    input_tools: Cow<'a, [TurnTools]>,
    calls: Cow<'a, [FunctionCall]>,
}

/// The bit of the first byte that says function calls follow.
const CALLS: u8 = 2;

impl Serialize for StoredResponse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            id: Cow::Borrowed(&self.id),
            owner: Cow::Borrowed(&self.owner),
            model: Cow::Borrowed(&self.model),
            previous: Cow::Borrowed(&self.previous),
            created_ms: self.created_ms,
            input: Cow::Borrowed(&self.input),
            output: Cow::Borrowed(&self.output),
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            spoke: Cow::Borrowed(&self.spoke),
            later: Later {
                incomplete: self.incomplete,
                input_tools: Cow::Borrowed(&self.input_tools),
                calls: Cow::Borrowed(&self.calls),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for StoredResponse {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        Ok(StoredResponse {
            id: w.id.into_owned(),
            owner: w.owner.into_owned(),
            model: w.model.into_owned(),
            previous: w.previous.into_owned(),
            created_ms: w.created_ms,
            input: w.input.into_owned(),
            output: w.output.into_owned(),
            input_tokens: w.input_tokens,
            output_tokens: w.output_tokens,
            spoke: w.spoke.into_owned(),
            incomplete: w.later.incomplete,
            input_tools: w.later.input_tools.into_owned(),
            calls: w.later.calls.into_owned(),
        })
    }
}

impl Serialize for Later<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let calls = !(self.input_tools.is_empty() && self.calls.is_empty());
        let mut t = s.serialize_tuple(if calls { 3 } else { 1 })?;
        t.serialize_element(&(u8::from(self.incomplete) | if calls { CALLS } else { 0 }))?;
        if calls {
            t.serialize_element(&self.input_tools)?;
            t.serialize_element(&self.calls)?;
        }
        t.end()
    }
}

impl<'de, 'a> Deserialize<'de> for Later<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<Later<'a>>);
        impl<'de, 'a> Visitor<'de> for V<'a> {
            type Value = Later<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte 0 to 3, then the function calls if it has bit 1")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first: u8 = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(0, &self))?;
                if first > (CALLS | 1) {
                    return Err(A::Error::invalid_value(Unexpected::Unsigned(first.into()), &self));
                }
                let mut later =
                    Later { incomplete: first & 1 == 1, input_tools: Cow::Owned(vec![]), calls: Cow::Owned(vec![]) };
                if first & CALLS != 0 {
                    later.input_tools = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(1, &self))?;
                    later.calls = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(2, &self))?;
                }
                Ok(later)
            }
        }
        // A tuple of at most three: bincode reads only the elements the visitor asks for.
        d.deserialize_tuple(3, V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bincode::Options;

    /// A stored response as the first version defined it.
    #[derive(Serialize, Deserialize)]
    struct First {
        id: String,
        owner: String,
        model: String,
        previous: Option<String>,
        created_ms: u64,
        input: Vec<Turn>,
        output: String,
        input_tokens: u64,
        output_tokens: u64,
        spoke: String,
        incomplete: bool,
    }

    fn first(id: &str, incomplete: bool) -> First {
        First {
            id: id.into(),
            owner: "alice".into(),
            model: "m".into(),
            previous: Some("resp_0".into()),
            created_ms: 1_700_000_000_000,
            input: vec![Turn { role: "user".into(), content: "What is the weather in Paris?".into() }],
            output: "Sunny.".into(),
            input_tokens: 300,
            output_tokens: 70_000,
            spoke: "s1".into(),
            incomplete,
        }
    }

    fn as_now(f: &First) -> StoredResponse {
        StoredResponse {
            id: f.id.clone(),
            owner: f.owner.clone(),
            model: f.model.clone(),
            previous: f.previous.clone(),
            created_ms: f.created_ms,
            input: f.input.clone(),
            output: f.output.clone(),
            input_tokens: f.input_tokens,
            output_tokens: f.output_tokens,
            spoke: f.spoke.clone(),
            incomplete: f.incomplete,
            ..Default::default()
        }
    }

    fn with_calls(mut r: StoredResponse) -> StoredResponse {
        let call = |id: &str| FunctionCall {
            call_id: id.into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        };
        r.input.push(Turn { role: "tool".into(), content: "21 C".into() });
        r.input_tools = vec![
            TurnTools { calls: vec![call("call_1")], answers: None },
            TurnTools { calls: vec![], answers: Some("call_1".into()) },
        ];
        r.calls = vec![call("call_2"), call("call_3")];
        r
    }

    /// Both encodings Nave writes: the log's and snapshots' (variable-length integers,
    /// with a limit) and backups' (`bincode::serialize`, fixed-length).
    fn encodings<T: Serialize>(v: &T) -> [Vec<u8>; 2] {
        let varint = bincode::DefaultOptions::new().with_limit(1 << 20).serialize(v).expect("encodes");
        [varint, bincode::serialize(v).expect("encodes")]
    }

    fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], varint: bool) -> bincode::Result<T> {
        if varint {
            bincode::DefaultOptions::new().with_limit(1 << 20).reject_trailing_bytes().deserialize(bytes)
        } else {
            bincode::DefaultOptions::new().with_fixint_encoding().reject_trailing_bytes().deserialize(bytes)
        }
    }

    #[test]
    fn records_of_the_first_version_decode_and_new_ones_without_calls_are_written_alike() {
        // Records side by side, with a field after them, as in the state's map and the
        // log's commands: each must end where the first version's ended.
        let old = (vec![first("resp_1", false), first("resp_2", true)], 77u64);
        let now = (old.0.iter().map(as_now).collect::<Vec<_>>(), 77u64);
        for (i, bytes) in encodings(&old).iter().enumerate() {
            let got: (Vec<StoredResponse>, u64) = decode(bytes, i == 0).expect("the first version's records decode");
            assert_eq!(got, now);
        }
        assert_eq!(encodings(&now), encodings(&old), "no calls: written as the first version wrote it");
    }

    #[test]
    fn calls_round_trip_and_the_first_version_refuses_them() {
        let rs = (vec![with_calls(as_now(&first("resp_1", true))), as_now(&first("resp_2", false))], 77u64);
        for (i, bytes) in encodings(&rs).iter().enumerate() {
            let varint = i == 0;
            assert_eq!(decode::<(Vec<StoredResponse>, u64)>(bytes, varint).expect("decodes"), rs);
            // An older node cannot take them for something else: its bool is not 2 or 3.
            assert!(decode::<(Vec<First>, u64)>(bytes, varint).is_err());
        }
        // The byte after the first version's fields says what follows; another value is
        // an error, never a guess.
        let calls = with_calls(as_now(&first("resp_1", true)));
        let plain = StoredResponse { input_tools: vec![], calls: vec![], ..calls.clone() };
        for (i, (with, without)) in encodings(&calls).into_iter().zip(encodings(&plain)).enumerate() {
            let at = without.len() - 1;
            assert_eq!((without[at], with[at]), (1, 3));
            let mut bad = with.clone();
            bad[at] = 4;
            assert!(decode::<StoredResponse>(&bad, i == 0).is_err());
        }
    }
}
