"""Web alt text of the input images, kept in each record for CLIPS' web-caption stream (the captioner never
sees it): a sidecar text file beside each image (photo.jpg -> photo.txt, as img2dataset writes them), or one
JSONL file given as `--alt-text FILE`, which then is the only source.

All of it is read before any captioning starts, so that a bad file stops the run at once and the run's
identity (its config hash) can cover the alt text itself.
"""

import codecs
import json
import os

SIDECAR_SUFFIX = ".txt"
_LINE_FORMAT = 'each line is {"image": "<image id>", "alt_text": "<text>" or null}'


def clean_alt_text(text: str) -> str | None:
    """Surrounding whitespace removed; None where nothing is left, so an empty file means no alt text."""
    return text.strip() or None


def decode_text(data: bytes) -> str:
    """UTF-8 (or UTF-16 behind its byte-order mark), any byte-order mark dropped; undecodable bytes become
    U+FFFD rather than an error, as web alt text is often mis-encoded."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def sidecar_path(image_path: str) -> str | None:
    """The text file beside an image that holds its alt text; None for a .txt input (it is its own name)."""
    stem, suffix = os.path.splitext(image_path)
    return None if suffix == SIDECAR_SUFFIX else stem + SIDECAR_SUFFIX


def sidecars_among(names: list[str]) -> set[str]:
    """The names among one folder's file `names` that hold the alt text of another file there."""
    split = [os.path.splitext(name) for name in names]
    stems = {stem for stem, suffix in split if suffix != SIDECAR_SUFFIX}
    return {stem + suffix for stem, suffix in split if suffix == SIDECAR_SUFFIX and stem in stems}


def read_sidecars(inputs: list[tuple[str, str]]) -> dict[str, str]:
    """Image id -> alt text, for the inputs with a non-empty sidecar."""
    texts = {}
    for image_id, path in inputs:
        sidecar = sidecar_path(path)
        if sidecar is None:
            continue
        try:
            with open(sidecar, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ValueError(f"alt text {sidecar} of image {image_id!r} cannot be read ({e}); fix or remove it") from e
        text = clean_alt_text(decode_text(data))
        if text:
            texts[image_id] = text
    return texts


def _entry(line: str, where: str) -> tuple[str, str | None]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg}); {_LINE_FORMAT}") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: a JSON {type(entry).__name__}, not an object; {_LINE_FORMAT}")
    if not isinstance(entry.get("image"), str) or not entry["image"]:
        raise ValueError(f'{where}: "image" is missing or not a non-empty string; {_LINE_FORMAT}')
    if "alt_text" not in entry or not isinstance(entry["alt_text"], (str, type(None))):
        raise ValueError(f'{where}: "alt_text" is missing or not a string or null; {_LINE_FORMAT}')
    return entry["image"], entry["alt_text"]


def read_alt_text_file(path: str, inputs: list[tuple[str, str]]) -> tuple[dict[str, str], int]:
    """(image id -> alt text for the inputs the file names with a non-empty text, how many of its lines name no
    input). A bad line is an error naming the file and line; blank lines are skipped."""
    known = {image_id for image_id, _ in inputs}
    texts, first_line, unmatched = {}, {}, []
    try:
        with open(path, "rb") as f:
            # split on newlines alone: a JSON string may hold U+2028, which splitlines() would also cut at
            lines = decode_text(f.read()).split("\n")
    except OSError as e:
        raise ValueError(f"--alt-text {path} cannot be read ({e})") from e
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        image_id, text = _entry(line, f"--alt-text {path} line {number}")
        if image_id in first_line:
            raise ValueError(
                f"--alt-text {path} line {number}: image {image_id!r} again (first on line "
                f"{first_line[image_id]}); give each image once"
            )
        first_line[image_id] = number
        text = clean_alt_text(text or "")
        if image_id not in known:
            unmatched.append(image_id)
        elif text:
            texts[image_id] = text
    if unmatched and len(unmatched) == len(first_line):
        example = inputs[0][0] if inputs else None
        raise ValueError(
            f"--alt-text {path}: none of its {len(first_line)} images is an input of this run (its "
            f'first: {unmatched[0]!r}; this run\'s first: {example!r}); "image" must be the id the run '
            "gives an image: its path relative to --images, or its line of --list"
        )
    return texts, len(unmatched)


def load_alt_texts(inputs: list[tuple[str, str]], alt_text_file: str | None = None) -> tuple[dict[str, str], int]:
    """(image id -> alt text, for the inputs that have one; lines of `alt_text_file` naming no input): from the
    file where one is given, else from the sidecars."""
    if alt_text_file:
        return read_alt_text_file(alt_text_file, inputs)
    return read_sidecars(inputs), 0
