"""Alt text of the inputs: sidecar .txt files and the --alt-text JSONL file, read before any captioning."""

import codecs
import json
import os
import re

import pytest

from captioning.alt_text import load_alt_texts
from captioning.images import list_inputs
from captioning.run import run_config_hash


def write(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def folder(tmp_path):
    """Images (empty files will do: nothing decodes them here) with sidecars of every odd kind."""
    root = str(tmp_path / "images")
    for name in ("a.jpg", "b.png", "c.jpg", "d.jpg", "e.jpg", "sub/f.webp"):
        write(os.path.join(root, name), b"")
    write(os.path.join(root, "a.txt"), codecs.BOM_UTF8 + "  A dog on a beach\t\n\n".encode())
    write(os.path.join(root, "b.txt"), b" \n\t ")  # nothing but whitespace: no alt text
    write(os.path.join(root, "c.txt"), b"caf\xe9 sign")  # Latin-1, not UTF-8
    write(os.path.join(root, "sub/f.txt"), "Straße".encode("utf-16"))  # UTF-16 with its byte-order mark
    write(os.path.join(root, "notes.txt"), b"no image of this name: an input, not alt text")
    return root


def test_sidecars_are_alt_text_not_inputs(folder):
    inputs = list_inputs(folder)
    assert [image_id for image_id, _ in inputs] == [
        "a.jpg",
        "b.png",
        "c.jpg",
        "d.jpg",
        "e.jpg",
        "notes.txt",
        os.path.join("sub", "f.webp"),
    ]
    texts, unmatched = load_alt_texts(inputs)
    assert texts == {"a.jpg": "A dog on a beach", "c.jpg": "caf\ufffd sign", os.path.join("sub", "f.webp"): "Straße"}
    assert unmatched == 0


def test_sidecars_beside_listed_images(folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{folder}/a.jpg\nimages/d.jpg\n")
    assert load_alt_texts(list_inputs(list_file=str(listing))) == ({f"{folder}/a.jpg": "A dog on a beach"}, 0)


def test_the_alt_text_file_replaces_the_sidecars(folder, tmp_path):
    path = tmp_path / "alt.jsonl"
    lines = [
        {"image": "b.png", "alt_text": " Red\u2028kite "},
        {"image": "c.jpg", "alt_text": None},
        {"image": "d.jpg", "alt_text": "   ", "url": "http://example.com/d.jpg"},
        {"image": "elsewhere.jpg", "alt_text": "not an input"},
    ]
    path.write_text(
        "\n".join(json.dumps(line, ensure_ascii=False) for line in lines[:2])
        + "\n\n"
        + "\n".join(json.dumps(line) for line in lines[2:])
        + "\n"
    )
    assert load_alt_texts(list_inputs(folder), str(path)) == ({"b.png": "Red\u2028kite"}, 1)


@pytest.mark.parametrize(
    "lines,message",
    [
        (['{"image": "a.jpg", "alt_text": "x"}', '{"image": "b.png", "alt_text": '], r" line 2: not JSON"),
        (['["a.jpg", "x"]'], r" line 1: a JSON list, not an object"),
        (["", '{"alt_text": "x"}'], r' line 2: "image" is missing'),
        (['{"image": "a.jpg"}'], r' line 1: "alt_text" is missing'),
        (['{"image": "a.jpg", "alt_text": 3}'], r' line 1: "alt_text" is missing or not a string or null'),
        (
            ['{"image": "a.jpg", "alt_text": "x"}', '{"image": "a.jpg", "alt_text": "y"}'],
            r" line 2: image 'a.jpg' again \(first on line 1\)",
        ),
        (['{"image": "/abs/a.jpg", "alt_text": "x"}'], r": none of its 1 images is an input of this run"),
    ],
)
def test_a_bad_alt_text_file_names_the_file_and_line(folder, tmp_path, lines, message):
    path = tmp_path / "alt.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"--alt-text {re.escape(str(path))}{message}"):
        load_alt_texts(list_inputs(folder), str(path))


def test_the_run_identity_covers_the_alt_text_content_only():
    inputs = [("a.jpg", "/x/a.jpg"), ("b.jpg", "/x/b.jpg")]
    without = run_config_hash({"seed": 0}, inputs)
    assert run_config_hash({"seed": 0}, inputs, {}) == without  # runs without alt text keep their hash
    assert run_config_hash({"seed": 0}, inputs, {"a.jpg": "a dog"}) not in (
        without,
        run_config_hash({"seed": 0}, inputs, {"a.jpg": "a cat"}),
    )
