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


# `captioning synthesize`: a text-only LLM captions photos that were never taken (Synth², docs/method.md, section 7).
SYNTH_PROMPT_VERSION = "rs-synth-prompts-v1"
# The role of each imagined photo's first caption, the annotator's description the roles' captions then follow.
SCENE_ROLE = "Annotator"
SCENE_KIND = "long"
SCENE_SYSTEM_PROMPT = (
    "You write the captions of a photo dataset the way its human annotators wrote them. Each photo is imagined: "
    "make up a realistic photo that contains the concept you are given, and describe it. Describe only what the "
    "photo shows: the objects, people and animals, what they do, the setting, colours, positions and light. "
    "No subjective judgement, no opinions, no fluffy or poetic language. Write the description only, with no "
    "preamble."
)
_SCENE_LENGTH = "Write two or three sentences, about 30 to 60 words."
ROLE_SYSTEM_PROMPT = (
    "You write captions for a photo you cannot see, from an annotator's description of it. After the description "
    "you are given an expert role and a length. Describe the same photo as that role would: keep to what the "
    "description states and what such a photo would plainly show, in plain, factual language, with no fluffy or "
    "poetic language. Write the caption only, with no preamble."
)


def scene_messages(concept: str) -> list[dict]:
    """Chat messages asking a text-only LLM for an annotator's description of an imagined photo of `concept`."""
    instruction = (
        f"Concept: {concept}\nMake up a human-annotated description of a photo that contains this concept. "
        f"{_SCENE_LENGTH}"
    )
    return [{"role": "system", "content": SCENE_SYSTEM_PROMPT}, {"role": "user", "content": instruction}]


def role_messages(description: str, role: Role, kind: str) -> list[dict]:
    """Chat messages asking `role` for a caption of `kind` of the imagined photo `description` describes. The
    description comes before the role, so vLLM's prefix cache shares it across the photo's role requests."""
    instruction = (
        f"Description of the photo: {description}\n\nYou are the {role.name}, an expert in {role.expertise}. "
        f"{role.responsibilities} {_LENGTH[kind]}"
    )
    return [{"role": "system", "content": ROLE_SYSTEM_PROMPT}, {"role": "user", "content": instruction}]
