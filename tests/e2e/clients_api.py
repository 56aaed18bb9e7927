"""The API beyond text, with the official OpenAI and Ollama Python clients against one hub
of a running cluster serving smollm2-135m: log-probabilities (chat, streamed and not;
completions with echo, enough to compute a perplexity), n choices, logit_bias's checks, streamed
and incomplete Responses, DELETE of a stored response, model routes, Ollama's show, ps
and generate, the JSON 404/405, and a 400 naming each field Nave does not implement.

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
expect_400(lambda: client.responses.create(model=M, input="x", tools=[{"type": "function", "name": "f",
                                                                        "parameters": {}}]), "tools")

# Fields Nave does not implement are a 400 naming them; text output and `user` are fine.
tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
expect_400(lambda: client.chat.completions.create(model=M, messages=QUESTION, tools=[tool]), "tools")
expect_400(lambda: client.chat.completions.create(model=M, messages=QUESTION, tool_choice="required"), "tool_choice")
expect_400(lambda: client.chat.completions.create(model=M, messages=QUESTION, response_format={"type": "json_object"}),
           "response_format")
ok = client.chat.completions.create(model=M, messages=QUESTION, max_tokens=2, response_format={"type": "text"},
                                    user="end-user-7")
assert ok.choices[0].message.content is not None

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
# raw, an empty prompt loads, format and tools a clear error.
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
for call, field in [(lambda: o.chat(model=M, messages=QUESTION, format="json"), "format"),
                    (lambda: o.chat(model=M, messages=QUESTION, tools=[tool]), "tools")]:
    try:
        call()
        raise AssertionError(f"ollama {field}")
    except ollama.ResponseError as err:
        assert err.status_code == 400 and field in err.error, err
try:
    o.show("no-such-model")
    raise AssertionError("ollama show of an unknown model")
except ollama.ResponseError as err:
    assert err.status_code == 404 and "no-such-model" in err.error, err
print("api clients ok")
