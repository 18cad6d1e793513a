"""Chat with the deployed model through the gateway, tokens printed as they stream in.

python chat.py --base-url http://127.0.0.1:8471/chat/v1 --token $TOKEN "Permission is"

``--model`` is the served model's name: ``char-lm`` for service.py, the deployment's name
(``chat``) for ``kaon deploy create chat --llm --from-job JOB``.
"""

import argparse

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt")
    parser.add_argument("--base-url", default="http://127.0.0.1:8471/chat/v1")
    parser.add_argument("--token", required=True, help="a token of the deployment")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--model", default="char-lm", help="the served model's name")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.token)
    stream = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": args.prompt}],
        max_tokens=args.max_tokens,
        temperature=0.8,
        stream=True,
    )
    print(args.prompt, end="", flush=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
