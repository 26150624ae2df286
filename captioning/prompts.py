"""Caption and judge prompts, versioned; the version is written into every caption.

Every request of an image starts with the same system prompt and the image, and only then names the
role: vLLM's prefix cache then shares the image's tokens across that image's requests.
"""

from captioning.roles import Role

PROMPT_VERSION = "rs-prompts-v1"

SYSTEM_PROMPT = (
    "You describe images for training vision-language models. After the image you are given an expert "
    "role and a length. Write only what the image supports, in plain prose, with no preamble."
)
_LENGTH = {
    "long": "Write one detailed paragraph of about 80 to 120 words.",
    "short": "Write one sentence of 10 to 25 words.",
}
JUDGE_SYSTEM_PROMPT = (
    "You judge captions written for an image by an expert role. Score from 1 to 100 how accurately and how "
    "fully the caption does the role's job for this image, and give a one-sentence rationale. "
    'Answer with JSON only: {"score": <integer 1-100>, "rationale": "<one sentence>"}.'
)
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 100}, "rationale": {"type": "string"}},
    "required": ["score", "rationale"],
}


def caption_messages(role: Role, kind: str) -> list[dict]:
    """Chat messages asking `role` for a caption of `kind`; the image is the first part of the user turn."""
    instruction = f"You are the {role.name}, an expert in {role.expertise}. {role.responsibilities} {_LENGTH[kind]}"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]},
    ]


def judge_messages(role: Role, caption: str) -> list[dict]:
    text = f"Role: {role.name}. Its job: {role.responsibilities}\nCaption: {caption}"
    return [
        {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
    ]
