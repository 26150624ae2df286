import json

import pytest
from transformers import AutoProcessor

from captioning.prompts import caption_messages
from captioning.roles import load_roles
from rsclip_jax.data.records import CAPTION_KINDS


def test_default_roles_are_the_five_experts():
    roles = load_roles()
    assert roles.version == "default-v1"
    assert [r.name for r in roles.roles] == [
        "Observer of Details",
        "Interpreter of Context",
        "Compositional Analyst",
        "Narrative Setter",
        "Emotional Responder",
    ]
    assert all(r.expertise and r.responsibilities for r in roles.roles)


def test_user_role_file_and_bad_files(tmp_path):
    path = tmp_path / "roles.json"
    path.write_text(
        json.dumps(
            {
                "version": "mine-v2",
                "roles": [{"name": "Botanist", "expertise": "plants", "responsibilities": "Name the plants."}],
            }
        )
    )
    assert load_roles(str(path)).roles[0].name == "Botanist"
    path.write_text(json.dumps({"version": "x", "roles": [{"name": "no fields"}]}))
    with pytest.raises(ValueError, match=f"role file {path} must be JSON"):
        load_roles(str(path))


def test_every_prompt_of_an_image_shares_the_prefix_up_to_the_image(tiny_model):
    processor = AutoProcessor.from_pretrained(tiny_model)
    prompts = [
        processor.apply_chat_template(caption_messages(role, kind), add_generation_prompt=True, tokenize=False)
        for role in load_roles().roles
        for kind in CAPTION_KINDS
    ]
    image_end = prompts[0].index("<|vision_end|>") + len("<|vision_end|>")
    assert all(p[:image_end] == prompts[0][:image_end] for p in prompts)  # system prompt, then the image
    for prompt, (role, kind) in zip(prompts, [(r, k) for r in load_roles().roles for k in CAPTION_KINDS]):
        assert prompt.index(role.name) > image_end  # the role comes after the image
    assert len(set(prompts)) == 10
