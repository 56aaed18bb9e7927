"""The official OpenAI and Ollama Python clients against every hub of a running cluster.

Usage: clients.py KEY URL [URL ...]; exits non-zero with a message on the first failure.
"""
import sys

import ollama
import openai

key, urls = sys.argv[1], sys.argv[2:]
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
QUESTION = {"role": "user", "content": "What is the capital of France?"}

for url in urls:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
    models = [m.id for m in client.models.list()]
    assert "smollm2-135m" in models, models

    r = client.chat.completions.create(model="smollm2-135m", messages=[SYSTEM, QUESTION], temperature=0, max_tokens=32)
    text = r.choices[0].message.content
    assert "Paris" in text, f"{url} non-streamed: {text!r}"
    assert r.usage.completion_tokens > 0 and r.choices[0].finish_reason == "stop", r

    stream = client.chat.completions.create(model="smollm2-135m", messages=[SYSTEM, QUESTION], temperature=0, max_tokens=32,
                                            stream=True, stream_options={"include_usage": True})
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert "Paris" in "".join(parts), f"{url} streamed: {''.join(parts)!r}"
    assert usage is not None and usage.completion_tokens > 0

    first = client.responses.create(model="smollm2-135m", instructions="You are a helpful assistant.",
                                    input="What is the capital of France?", temperature=0, max_output_tokens=32)
    assert "Paris" in first.output_text, f"{url} responses: {first.output_text!r}"
    other_hub = openai.OpenAI(base_url=f"{urls[(urls.index(url) + 1) % len(urls)]}/v1", api_key=key, max_retries=0, timeout=120)
    assert other_hub.responses.retrieve(first.id).output_text == first.output_text
    follow = other_hub.responses.create(model="smollm2-135m", input="And of Italy?", previous_response_id=first.id,
                                        temperature=0, max_output_tokens=32)
    assert follow.usage.input_tokens > first.usage.input_tokens, (first.usage, follow.usage)

    c = client.completions.create(model="smollm2-135m", prompt="The capital of France is", temperature=0, max_tokens=8)
    assert c.choices[0].text, c

    for bad, exc in [
        (lambda: openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list(), openai.AuthenticationError),
        (lambda: client.chat.completions.create(model="no-such-model", messages=[QUESTION]), openai.NotFoundError),
        (lambda: client.chat.completions.create(model="smollm2-135m", messages=[QUESTION], temperature=-1), openai.BadRequestError),
    ]:
        try:
            bad()
            raise AssertionError(f"{url}: expected {exc.__name__}")
        except exc:
            pass

    o = ollama.Client(host=url, headers={"Authorization": f"Bearer {key}"})
    r = o.chat(model="smollm2-135m", messages=[SYSTEM, QUESTION], options={"temperature": 0, "num_predict": 32})
    assert "Paris" in r.message.content, f"{url} ollama chat: {r.message.content!r}"
    text = "".join(p.message.content for p in o.chat(model="smollm2-135m", messages=[SYSTEM, QUESTION], stream=True,
                                                     options={"temperature": 0, "num_predict": 32}))
    assert "Paris" in text, f"{url} ollama stream: {text!r}"
    g = o.generate(model="smollm2-135m", prompt="What is the capital of France?", system="You are a helpful assistant.",
                   options={"temperature": 0, "num_predict": 32})
    assert "Paris" in g.response, f"{url} ollama generate: {g.response!r}"
    assert any(m.model == "smollm2-135m" for m in o.list().models)
    print(f"{url}: openai and ollama clients ok")
print("all hubs ok")
