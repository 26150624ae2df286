"""Image-text retrieval sets from their usual annotation files, as (image paths, captions per image).

Layouts under `root` (`annotations` overrides the annotation file; `limit` keeps the first N images):
- coco:          annotations/captions_val2017.json and val2017/ (5000 images, first 5 captions each)
- coco_karpathy: dataset_coco.json (Karpathy split "test", 5000 images) and its filepath/ folders
- flickr30k:     dataset_flickr30k.json (Karpathy split "test", 1000 images) and flickr30k-images/
- urban1k:       image/N.jpg and caption/N.txt (Long-CLIP's Urban-1k)
- sharegpt4v:    share-captioner_coco_lcs_sam_1246k_1107.json (first 1000 entries, Long-CLIP's split)
                 with its images under root
- dci:           densely_captioned_images/{splits.json, annotations/, photos/} (extra_caption)
- jsonl:         captions.jsonl, one {"image": path under root, "captions": [...]} per line
"""

import dataclasses
import glob
import json
import os

CAPTIONS_PER_IMAGE = 5  # COCO images have 5-7 captions; the benchmarks take the first 5


@dataclasses.dataclass(frozen=True)
class RetrievalSet:
    image_paths: list[str]
    captions: list[list[str]]  # captions[i] describe image_paths[i]


def _read_json(path: str, layout: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: the {layout}")
    with open(path) as f:
        return json.load(f)


def _coco(root, annotations):
    data = _read_json(
        annotations or os.path.join(root, "annotations", "captions_val2017.json"),
        "COCO layout is ROOT/annotations/captions_val2017.json with images in ROOT/val2017/",
    )
    captions: dict[int, list[str]] = {}
    for annotation in data["annotations"]:
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
    images = sorted(data["images"], key=lambda image: image["id"])
    return [
        (os.path.join(root, "val2017", image["file_name"]), captions[image["id"]][:CAPTIONS_PER_IMAGE])
        for image in images
    ]


def _karpathy(default_file: str, image_folder: str | None):
    def load(root, annotations):
        data = _read_json(
            annotations or os.path.join(root, default_file),
            f"Karpathy layout is ROOT/{default_file} with the images under ROOT",
        )
        return [
            (
                os.path.join(root, image_folder or image.get("filepath", ""), image["filename"]),
                [sentence["raw"].strip() for sentence in image["sentences"]][:CAPTIONS_PER_IMAGE],
            )
            for image in data["images"]
            if image["split"] == "test"
        ]

    return load


def _urban1k(root, annotations):
    caption_files = sorted(glob.glob(os.path.join(root, "caption", "*.txt")), key=_natural_key)
    if not caption_files:
        raise FileNotFoundError(
            f"{root}/caption/*.txt matched nothing: the Urban-1k layout is ROOT/image/N.jpg and ROOT/caption/N.txt"
        )
    pairs = []
    for path in caption_files:
        stem = os.path.splitext(os.path.basename(path))[0]
        with open(path) as f:
            pairs.append((os.path.join(root, "image", stem + ".jpg"), [f.read().strip()]))
    return pairs


def _natural_key(path: str):
    stem = os.path.splitext(os.path.basename(path))[0]
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _sharegpt4v(root, annotations):
    data = _read_json(
        annotations or os.path.join(root, "share-captioner_coco_lcs_sam_1246k_1107.json"),
        "ShareGPT4V layout is ROOT/share-captioner_coco_lcs_sam_1246k_1107.json with its images under ROOT",
    )
    # Long-CLIP evaluates on the first 1000 entries (and trains on the rest); the caption is the answer.
    return [(os.path.join(root, entry["image"]), [entry["conversations"][1]["value"].strip()]) for entry in data[:1000]]


def _dci(root, annotations):
    base = os.path.join(root, "densely_captioned_images")
    splits = _read_json(
        annotations or os.path.join(base, "splits.json"),
        "DCI layout is ROOT/densely_captioned_images/{splits.json,annotations/,photos/}",
    )
    pairs = []
    for name in (name for split in splits.values() for name in split):
        entry = _read_json(os.path.join(base, "annotations", name), "DCI annotation listed in splits.json")
        pairs.append((os.path.join(base, "photos", entry["image"]), [entry["extra_caption"].strip()]))
    return pairs


def _jsonl(root, annotations):
    path = annotations or os.path.join(root, "captions.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f'{path} does not exist: the jsonl layout is one {{"image": ..., "captions": [...]}} per line'
        )
    pairs = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                entry = json.loads(line)
                if not entry.get("captions"):
                    raise ValueError(f"{path} line {number}: no captions for {entry.get('image')}")
                pairs.append((os.path.join(root, entry["image"]), list(entry["captions"])))
    return pairs


LOADERS = {
    "coco": _coco,
    "coco_karpathy": _karpathy("dataset_coco.json", None),
    "flickr30k": _karpathy("dataset_flickr30k.json", "flickr30k-images"),
    "urban1k": _urban1k,
    "sharegpt4v": _sharegpt4v,
    "dci": _dci,
    "jsonl": _jsonl,
}


def load_retrieval_set(dataset: str, root: str, *, annotations: str = "", limit: int = 0) -> RetrievalSet:
    """The images and captions of `dataset` (a key of LOADERS) under `root`; every image must exist."""
    if dataset not in LOADERS:
        raise ValueError(f"unknown retrieval dataset {dataset!r}: one of {sorted(LOADERS)}")
    pairs = LOADERS[dataset](root, annotations or None)
    if limit:
        pairs = pairs[:limit]
    if not pairs:
        raise ValueError(f"the {dataset} set under {root} has no images")
    missing = [path for path, _ in pairs if not os.path.exists(path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of the {dataset} set are missing, the first {missing[0]}")
    return RetrievalSet([path for path, _ in pairs], [captions for _, captions in pairs])
