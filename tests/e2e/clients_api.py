"""The API beyond text, with the official OpenAI and Ollama Python clients against one hub
of a running cluster serving smollm2-135m: log-probabilities (chat, streamed and not;
completions with echo, enough to compute a perplexity), n choices, logit_bias's checks, streamed
and incomplete Responses, DELETE of a stored response, structured output (parse() with a
Pydantic model, json_object, Ollama's format), tools (required, named, streamed with the
arguments in deltas, the result sent back; on the Responses API too, whole, streamed and
continued; Ollama's from a Python function), embeddings (OpenAI's list, base64 and
dimensions; Ollama's embed), model routes, Ollama's show, ps, pull and generate, the JSON
404/405, and a 400 naming each field Nave does not implement.

Usage: clients_api.py KEY URL; exits non-zero with a message on the first failure.
Every request is greedy or seeded, so the run is deterministic.
"""
import json
import math
import sys
import urllib.error
import urllib.request

import ollama
import openai

key, url = sys.argv[1], sys.argv[2]
M = "smollm2-135m"
client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


def expect_400(call, field):
    try:
        call()
    except openai.BadRequestError as e:
        assert field in str(e), f"the 400 names {field}: {e}"
        return
    raise AssertionError(f"{field}: expected a 400")


# Chat log-probabilities: the greedy token is the most likely one, the alternatives are
# in order and their probabilities sum to at most 1; streamed, the same tokens.
r = client.chat.completions.create(model=M, messages=QUESTION, temperature=0, max_tokens=12, logprobs=True,
                                   top_logprobs=5)
assert r.system_fingerprint and r.system_fingerprint.startswith("fp_"), r.system_fingerprint
content = r.choices[0].logprobs.content
assert content, r
for t in content:
    assert len(t.top_logprobs) == 5, t
    assert t.top_logprobs[0].token == t.token and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6, t
    assert all(a.logprob >= b.logprob for a, b in zip(t.top_logprobs, t.top_logprobs[1:])), t
    assert sum(math.exp(a.logprob) for a in t.top_logprobs) <= 1 + 1e-6, t
    assert t.logprob <= 0 and bytes(t.bytes).decode("utf-8", "replace") == t.token, t
assert "".join(t.token for t in content) == r.choices[0].message.content, (content, r.choices[0].message.content)
streamed = []
for chunk in client.chat.completions.create(model=M, messages=QUESTION, temperature=0, max_tokens=12, logprobs=True,
                                            top_logprobs=2, stream=True):
    if chunk.choices and chunk.choices[0].logprobs:
        streamed.extend(chunk.choices[0].logprobs.content)
assert [t.token for t in streamed] == [t.token for t in content], (streamed, content)
assert all(abs(a.logprob - b.logprob) < 1e-4 for a, b in zip(streamed, content))
assert client.chat.completions.create(model=M, messages=QUESTION, max_tokens=2).choices[0].logprobs is None
expect_400(lambda: client.chat.completions.create(model=M, messages=QUESTION, top_logprobs=2), "top_logprobs")
expect_400(lambda: client.chat.completions.create(model=M, messages=QUESTION, logprobs=True, top_logprobs=21),
           "top_logprobs")

# n choices: distinct indexes, each with its own seed (seed + index): choice i of a
# request with seed s is what a lone request with seed s + i answers.
r = client.chat.completions.create(model=M, messages=QUESTION, temperature=1, seed=11, max_tokens=10, n=3)
assert sorted(c.index for c in r.choices) == [0, 1, 2], r
for c in r.choices:
    alone = client.chat.completions.create(model=M, messages=QUESTION, temperature=1, seed=11 + c.index, max_tokens=10)
    assert alone.choices[0].message.content == c.message.content, (c, alone)
texts = {}
for chunk in client.chat.completions.create(model=M, messages=QUESTION, temperature=1, seed=11, max_tokens=10, n=3,
                                            stream=True, stream_options={"include_usage": True}):
    for c in chunk.choices:
        texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
    if chunk.usage:
        usage = chunk.usage
assert texts == {c.index: c.message.content for c in r.choices}, (texts, r.choices)
assert usage.completion_tokens == r.usage.completion_tokens and usage.prompt_tokens == r.usage.prompt_tokens
expect_400(lambda: client.chat.completions.create(model=M, messages=QUESTION, n=9), "n")

# logit_bias: keys are token ids (what the bias does is tested in the engine's own tests,
# where the ids are known); anything else is a 400 naming it.
expect_400(lambda: client.chat.completions.create(model=M, messages=QUESTION, logit_bias={"abc": 1}), "logit_bias")
expect_400(lambda: client.chat.completions.create(model=M, messages=QUESTION, logit_bias={"5": 200}), "logit_bias")

# Completions with echo: the prompt's tokens have log-probabilities (the first none), so
# a perplexity follows; the last prompt token's equals what a completion of the shorter
# prompt gives it.
prompt = "The capital of France is Paris"
e = client.completions.create(model=M, prompt=prompt, temperature=0, max_tokens=1, logprobs=1, echo=True)
lp = e.choices[0].logprobs
assert e.choices[0].text.startswith(prompt), e
n_prompt = e.usage.prompt_tokens
assert len(lp.tokens) == n_prompt + e.usage.completion_tokens, (lp, e.usage)
assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp
scored = lp.token_logprobs[1:n_prompt]
assert all(x is not None and x <= 0 for x in scored), lp
perplexity = math.exp(-sum(scored) / len(scored))
assert 1 < perplexity < 1e4, perplexity
assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset), lp
short = client.completions.create(model=M, prompt="The capital of France is", temperature=0, max_tokens=1, logprobs=5)
top = short.choices[0].logprobs.top_logprobs[0]
if lp.tokens[n_prompt - 1] in top:
    assert abs(top[lp.tokens[n_prompt - 1]] - lp.token_logprobs[n_prompt - 1]) < 1e-2, (top, lp)
print(f"perplexity of {prompt!r}: {perplexity:.2f}")

# Responses: streamed as OpenAI's event sequence; cut by max_output_tokens, incomplete.
events = list(client.responses.create(model=M, instructions="You are a helpful assistant.",
                                      input="What is the capital of France?", temperature=0, max_output_tokens=128,
                                      stream=True))
kinds = [ev.type for ev in events]
assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"], kinds
final = events[-1].response
ended = "response.completed" if final.status == "completed" else "response.incomplete"
assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                      ended], kinds
assert set(kinds[4:-4]) == {"response.output_text.delta"}, kinds
assert [ev.sequence_number for ev in events] == list(range(len(events))), events
text = "".join(ev.delta for ev in events if ev.type == "response.output_text.delta")
assert final.output_text == text and "Paris" in text, (final, text)
assert client.responses.retrieve(final.id).output_text == text
cut = client.responses.create(model=M, input="Tell me a long story.", temperature=0, max_output_tokens=4)
assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens", cut
again = client.responses.retrieve(cut.id)
assert again.status == "incomplete" and again.incomplete_details.reason == "max_output_tokens", again
cut_events = list(client.responses.create(model=M, input="Tell me a long story.", temperature=0,
                                          max_output_tokens=4, stream=True))
assert cut_events[-1].type == "response.incomplete" and cut_events[-1].response.status == "incomplete", cut_events[-1]
client.responses.delete(final.id)
try:
    client.responses.retrieve(final.id)
    raise AssertionError("a deleted response is gone")
except openai.NotFoundError:
    pass

# Structured output: the SDK's parse() with a Pydantic model (a strict JSON schema) gets
# an object of that model; json_object mode gets a JSON object.
from pydantic import BaseModel


class City(BaseModel):
    name: str
    country: str
    population: int
    landmarks: list[str]


parsed = client.chat.completions.parse(model=M, messages=[{"role": "user", "content": "Describe Paris as JSON."}],
                                       response_format=City, temperature=0, max_tokens=400)
city = parsed.choices[0].message.parsed
assert isinstance(city, City), parsed
print(f"parsed: {city!r}")
resp = client.responses.parse(model=M, input="Describe Paris as JSON.", text_format=City, temperature=0,
                              max_output_tokens=400)
assert isinstance(resp.output_parsed, City), resp
expect_400(lambda: client.responses.create(model=M, input="x", text={"format": {"type": "xml"}}), "text.format")
obj = client.chat.completions.create(model=M, messages=[{"role": "user", "content": "Give me a JSON object."}],
                                     response_format={"type": "json_object"}, temperature=1, seed=4, max_tokens=200)
if obj.choices[0].finish_reason == "stop":
    assert isinstance(json.loads(obj.choices[0].message.content), dict), obj
expect_400(lambda: client.chat.completions.create(model=M, messages=QUESTION, response_format={"type": "xml"}),
           "response_format")

# Tools: a required call names a tool and its arguments validate against its schema;
# streamed, the same call in OpenAI's chunks; its result sent back yields an answer.
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 40},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
r = client.chat.completions.create(model=M, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0,
                                   max_tokens=100)
choice = r.choices[0]
assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, r
call = choice.message.tool_calls[0]
args = json.loads(call.function.arguments)
assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_"), call
assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit") and len(args["city"]) <= 40, args
print(f"tool call: {call.function.name}({call.function.arguments})")
# Streamed, the arguments come as they are generated: in more than one delta (each of
# SmolLM2's tokens of them), adding up to what the whole answer has.
calls, finish, pieces = {}, None, 0
for chunk in client.chat.completions.create(model=M, messages=ASK, tools=[WEATHER], tool_choice="required",
                                            temperature=0, max_tokens=100, stream=True):
    for c in chunk.choices:
        for d in c.delta.tool_calls or []:
            got = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            got["id"] = d.id or got["id"]
            got["name"] += (d.function.name or "") if d.function else ""
            got["arguments"] += (d.function.arguments or "") if d.function else ""
            pieces += d.index == 0 and bool(d.function and d.function.arguments)
        finish = c.finish_reason or finish
assert finish == "tool_calls" and calls[0]["name"] == "get_weather", (finish, calls)
assert calls[0]["arguments"] == call.function.arguments, (calls, call)
assert pieces > 1, f"the arguments came in {pieces} delta(s)"
named = client.chat.completions.create(model=M, messages=ASK, tools=[WEATHER], temperature=1, seed=2, max_tokens=100,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
assert named.choices[0].message.tool_calls[0].function.name == "get_weather", named
answer = client.chat.completions.create(model=M, tools=[WEATHER], temperature=0, max_tokens=40, messages=ASK + [
    choice.message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})}])
assert answer.choices[0].message.content, answer
print(f"after the tool: {answer.choices[0].message.content!r}")

# Tools on the Responses API, in its shape (flat): a required call is a function_call item
# whose arguments validate; its result sent back with previous_response_id yields an
# answer; streamed, the call's item with its arguments in deltas, as the SDK's stream
# helper and create(stream=True) read them.
R_WEATHER = {"type": "function", "name": "get_weather", "description": WEATHER["function"]["description"],
             "parameters": WEATHER["function"]["parameters"], "strict": True}
R_ASK = "What is the weather like in Paris today?"
r = client.responses.create(model=M, input=R_ASK, tools=[R_WEATHER], tool_choice="required", temperature=0,
                            max_output_tokens=100)
fcs = [o for o in r.output if o.type == "function_call"]
assert r.status == "completed" and fcs, r
fc = fcs[0]
r_args = json.loads(fc.arguments)
assert fc.name == "get_weather" and fc.call_id.startswith("call_") and fc.id.startswith("fc_"), fc
assert fc.status == "completed" and r_args == args, (fc, args)
assert [o.call_id for o in client.responses.retrieve(r.id).output] == [o.call_id for o in fcs]
print(f"responses tool calls: {[(o.name, o.arguments) for o in fcs]}")
follow = client.responses.create(model=M, previous_response_id=r.id, tools=[R_WEATHER], temperature=0,
                                 max_output_tokens=40, input=[{"type": "function_call_output", "call_id": fc.call_id,
                                                               "output": json.dumps({"temperature": 21, "sky": "sunny"})}])
assert follow.status in ("completed", "incomplete") and follow.output_text, follow
print(f"responses after the tool: {follow.output_text!r}")
with client.responses.stream(model=M, input=R_ASK, tools=[R_WEATHER], tool_choice="required", temperature=0,
                             max_output_tokens=100) as s:
    kinds, deltas = [], {}
    for ev in s:
        kinds.append(ev.type)
        if ev.type == "response.function_call_arguments.delta":
            deltas.setdefault(ev.item_id, []).append(ev.delta)
    final = s.get_final_response()
s_fc = [o for o in final.output if o.type == "function_call"][0]
pieces = deltas.get(s_fc.id, [])
assert s_fc.arguments == fc.arguments == "".join(pieces) and len(pieces) > 1, (s_fc, fc, deltas)
assert s_fc.parsed_arguments == r_args, s_fc
first = kinds.index("response.function_call_arguments.delta")
assert kinds[first - 1] == "response.output_item.added" and kinds[-1] == "response.completed", kinds
assert kinds.index("response.function_call_arguments.done") < kinds.index("response.completed"), kinds
raw = list(client.responses.create(model=M, input=R_ASK, tools=[R_WEATHER], tool_choice="required", temperature=0,
                                   max_output_tokens=100, stream=True))
added = [ev for ev in raw if ev.type == "response.output_item.added" and ev.item.type == "function_call"]
done = [ev for ev in raw if ev.type == "response.output_item.done" and ev.item.type == "function_call"]
assert added and done and added[0].item.arguments == "" and done[0].item.arguments == fc.arguments, (added, done)
assert [ev.sequence_number for ev in raw] == list(range(len(raw))), raw
assert raw[-1].type == "response.completed" and raw[-1].response.output[-1].call_id == done[-1].item.call_id
expect_400(lambda: client.responses.create(model=M, input="x", tools=[{"type": "web_search"}]), "tools[0].type")
expect_400(lambda: client.chat.completions.create(model=M, messages=QUESTION, tool_choice="required"), "tool_choice")
expect_400(lambda: client.chat.completions.create(model=M, messages=QUESTION, tools=[{
    "type": "function", "function": {"name": "bad name"}}]), "tools")
expect_400(lambda: client.chat.completions.create(model=M, messages=QUESTION, functions=[{"name": "f"}]), "functions")
ok = client.chat.completions.create(model=M, messages=QUESTION, max_tokens=2, response_format={"type": "text"},
                                    user="end-user-7")
assert ok.choices[0].message.content is not None

# Embeddings: a list in, one normalized vector per input in order; closer texts closer;
# base64 the same floats; counted as prompt tokens.
texts = ["The cat sat on the mat.", "A kitten was sitting on the rug.", "Quarterly tax filings are due in April."]
emb = client.embeddings.create(model=M, input=texts)
vecs = [d.embedding for d in emb.data]
assert [d.index for d in emb.data] == [0, 1, 2] and len({len(v) for v in vecs}) == 1, emb
assert all(abs(sum(x * x for x in v) - 1) < 1e-3 for v in vecs)
dot = lambda a, b: sum(x * y for x, y in zip(a, b))
assert dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2]), (dot(vecs[0], vecs[1]), dot(vecs[0], vecs[2]))
assert emb.usage.prompt_tokens > 10 and emb.usage.total_tokens == emb.usage.prompt_tokens, emb.usage
one = client.embeddings.create(model=M, input=texts[0], dimensions=64)
assert len(one.data[0].embedding) == 64, len(one.data[0].embedding)
raw64 = client.with_options().embeddings.with_raw_response.create(model=M, input=texts[0], encoding_format="base64")
import base64
import struct
b = base64.b64decode(json.loads(raw64.text)["data"][0]["embedding"])
floats = struct.unpack(f"<{len(b) // 4}f", b)
assert max(abs(x - y) for x, y in zip(floats, vecs[0])) < 1e-5
expect_400(lambda: client.embeddings.create(model=M, input=[]), "input")

# Model routes and JSON errors for unknown routes and methods.
assert client.models.retrieve(M).id == M
try:
    client.models.retrieve("no-such-model")
    raise AssertionError("unknown model")
except openai.NotFoundError:
    pass
for method, path, status in [("GET", "/v1/no-such-route", 404), ("DELETE", "/v1/models", 405)]:
    req = urllib.request.Request(f"{url}{path}", method=method, headers={"Authorization": f"Bearer {key}"})
    try:
        urllib.request.urlopen(req)
        raise AssertionError(f"{method} {path}")
    except urllib.error.HTTPError as err:
        body = json.loads(err.read())
        assert err.code == status and body["error"]["message"], (err.code, body)
try:
    urllib.request.urlopen(urllib.request.Request(f"{url}/api/no-such-route"))
    raise AssertionError("/api/no-such-route")
except urllib.error.HTTPError as err:
    assert err.code == 404 and isinstance(json.loads(err.read())["error"], str)

# Ollama: show (from the GGUF), ps (where it runs), generate with the template unless
# raw, an empty prompt loads.
o = ollama.Client(host=url, headers={"Authorization": f"Bearer {key}"})
s = o.show(M)
assert "<|im_start|>" in s.template, s.template
assert s.details.family == "llama" and s.details.quantization_level == "Q4_1", s.details
assert s.modelinfo["llama.context_length"] == 8192 and s.modelinfo["general.architecture"] == "llama", s.modelinfo
ps = o.ps()
assert [m.model for m in ps.models] == [M] and ps.models[0].size > 0, ps
g = o.generate(model=M, prompt="What is the capital of France?", options={"temperature": 0, "num_predict": 24})
raw = o.generate(model=M, prompt="What is the capital of France?", raw=True, options={"temperature": 0,
                                                                                     "num_predict": 4})
# The template wraps the prompt in its turns (and SmolLM's default system message).
assert raw.prompt_eval_count == 7 and g.prompt_eval_count > raw.prompt_eval_count + 10, (raw, g)
load = o.generate(model=M, prompt="")
assert load.done and load.done_reason == "load", load
# Ollama: format (a schema) gets JSON of that schema; tools from a Python function; embed.
c = o.chat(model=M, messages=[{"role": "user", "content": "Describe Paris as JSON."}], format=City.model_json_schema(),
           options={"temperature": 0, "num_predict": 400})
print(f"ollama format: {City.model_validate_json(c.message.content)!r}")
j = o.chat(model=M, messages=QUESTION, format="json", options={"temperature": 0, "num_predict": 200})
if j.done_reason == "stop":
    assert isinstance(json.loads(j.message.content), dict), j


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
      city: The name of the city
    """
    return "sunny"


t = o.chat(model=M, messages=ASK, tools=[get_weather], options={"temperature": 0, "num_predict": 100})
print(f"ollama tools: {t.message!r}")
assert t.done_reason == "stop", t
for tc in t.message.tool_calls or []:
    assert tc.function.name == "get_weather" and isinstance(tc.function.arguments, dict), tc
assert t.message.tool_calls or t.message.content, t
back = o.chat(model=M, options={"temperature": 0, "num_predict": 30}, tools=[get_weather], messages=ASK + [
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                       "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "sunny, 21 degrees", "tool_name": "get_weather"}])
assert back.message.content, back
e = o.embed(model=M, input=texts[:2])
assert len(e.embeddings) == 2 and abs(dot(e.embeddings[0], vecs[0]) - 1) < 1e-3, e
# (The Ollama client checks `format` itself: a bad one goes by hand.)
bad = urllib.request.Request(f"{url}/api/chat", method="POST", headers={"Authorization": f"Bearer {key}"},
                             data=json.dumps({"model": M, "messages": QUESTION, "format": "xml"}).encode())
try:
    urllib.request.urlopen(bad)
    raise AssertionError("ollama format xml")
except urllib.error.HTTPError as err:
    assert err.code == 400 and "format" in json.loads(err.read())["error"], err
# Pull (admins only): the model is in this machine's store already, so the stream is
# the manifest and success; an unknown model is a 404; an ordinary key a 403.
steps = [p.status for p in o.pull(M, stream=True)]
assert steps[0] == "pulling manifest" and steps[-1] == "success", steps
assert o.pull(M).status == "success"
for model, status in [("no-such-model", 404)]:
    try:
        o.pull(model)
        raise AssertionError(f"pull {model}")
    except ollama.ResponseError as err:
        assert err.status_code == status, err
made = urllib.request.Request(f"{url}/admin/v1/keys", method="POST", data=json.dumps({"name": "puller"}).encode(),
                              headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
ordinary = json.loads(urllib.request.urlopen(made).read())["key"]
try:
    ollama.Client(host=url, headers={"Authorization": f"Bearer {ordinary}"}).pull(M)
    raise AssertionError("an ordinary key pulled")
except ollama.ResponseError as err:
    assert err.status_code == 403, err
try:
    o.show("no-such-model")
    raise AssertionError("ollama show of an unknown model")
except ollama.ResponseError as err:
    assert err.status_code == 404 and "no-such-model" in err.error, err
print("api clients ok")
