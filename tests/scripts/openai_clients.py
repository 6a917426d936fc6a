"""Call the quickstart's services with the official openai client and print what came back.

Usage: openai_clients.py CHAT_BASE_URL CHAT_MODEL EMBEDDINGS_BASE_URL EMBEDDINGS_MODEL
Prints one JSON object: the chat answer, the streamed answer and chunk count, and the
embedding dimensions and cosine similarities of a paraphrase pair and an unrelated pair.
"""

import json
import math
import sys

try:
    import openai
except ImportError:
    sys.exit("the openai package is missing: run scripts/install-test-deps.sh")


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def main():
    chat_url, chat_model, embed_url, embed_model = sys.argv[1:5]
    question = [{"role": "user", "content": "What is the capital of France?"}]

    chat = openai.OpenAI(base_url=chat_url, api_key="unused", max_retries=2, timeout=300)
    answer = chat.chat.completions.create(
        model=chat_model, messages=question, temperature=0, max_tokens=32
    )
    chunks = 0
    streamed = ""
    for chunk in chat.chat.completions.create(
        model=chat_model, messages=question, temperature=0, max_tokens=32, stream=True
    ):
        chunks += 1
        if chunk.choices and chunk.choices[0].delta.content:
            streamed += chunk.choices[0].delta.content

    embed = openai.OpenAI(base_url=embed_url, api_key="unused", max_retries=2, timeout=300)
    sentences = [
        "The cat sits on the mat.",
        "A cat is sitting on a rug.",
        "Stock markets fell sharply on Monday.",
    ]
    vectors = [d.embedding for d in embed.embeddings.create(model=embed_model, input=sentences).data]

    print(
        json.dumps(
            {
                "answer": answer.choices[0].message.content,
                "finish_reason": answer.choices[0].finish_reason,
                "completion_tokens": answer.usage.completion_tokens,
                "streamed": streamed,
                "chunks": chunks,
                "dimensions": [len(v) for v in vectors],
                "paraphrase": cosine(vectors[0], vectors[1]),
                "unrelated": cosine(vectors[0], vectors[2]),
            }
        )
    )


if __name__ == "__main__":
    main()
