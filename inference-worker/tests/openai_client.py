"""Drives a running `aigc-worker serve` pair with the official `openai` Python client:
chat, streaming, models, errors and embeddings. Started by tests/openai_client.rs.

usage: openai_client.py CHAT_URL CHAT_MODEL EMBED_URL EMBED_MODEL API_KEY
"""

import math
import sys

try:
    import openai
except ImportError:
    sys.exit("the Python package `openai` is missing: run scripts/install-test-deps.sh")

chat_url, chat_model, embed_url, embed_model, api_key = sys.argv[1:6]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]

chat = openai.OpenAI(base_url=chat_url + "/v1", api_key=api_key, max_retries=0)
reply = chat.chat.completions.create(
    model=chat_model, messages=QUESTION, temperature=0, max_tokens=40
)
answer = reply.choices[0].message.content
assert "Paris" in answer, answer
assert reply.usage.prompt_tokens == 16, reply.usage
assert reply.usage.total_tokens == 16 + reply.usage.completion_tokens, reply.usage

stream = chat.chat.completions.create(
    model=chat_model, messages=QUESTION, temperature=0, max_tokens=40, stream=True
)
streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
assert streamed == answer, (streamed, answer)

assert [m.id for m in chat.models.list().data] == [chat_model]

try:
    chat.chat.completions.create(model="no-such-model", messages=QUESTION)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as error:
    assert error.status_code == 404

try:
    chat.chat.completions.create(model=chat_model, messages=QUESTION, max_tokens=0)
    raise AssertionError("max_tokens=0 was accepted")
except openai.UnprocessableEntityError as error:
    assert error.status_code == 422

anonymous = openai.OpenAI(base_url=chat_url + "/v1", api_key="wrong-key", max_retries=0)
try:
    anonymous.models.list()
    raise AssertionError("a wrong API key was accepted")
except openai.AuthenticationError:
    pass

embed = openai.OpenAI(base_url=embed_url + "/v1", api_key=api_key, max_retries=0)
sentences = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar.",
    "The stock market fell sharply today.",
]
result = embed.embeddings.create(model=embed_model, input=sentences)
vectors = [d.embedding for d in result.data]
assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]), "paraphrases"
single = embed.embeddings.create(
    model=embed_model, input=sentences[0], encoding_format="float"
)
assert max(abs(a - b) for a, b in zip(single.data[0].embedding, vectors[0])) < 1e-5
print("openai client: chat, streaming, models, errors and embeddings ok")
