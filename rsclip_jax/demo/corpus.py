"""A seeded corpus of procedurally rendered scenes with role-play captions, written as caption shards.

Each scene is a background (colour, lighting) and one or two objects (shape, colour, texture, size,
position). Every caption is written from the scene's known content in the voice of one of the five
roles; they are procedural captions, labelled as such in their provenance, not an LLM's. Most images
also get a short web-style alt text (for CLIPS' web-caption stream), noisier than the captions.

A corpus may hold some (colour, shape) combinations out of its train and held-out splits and write a third split,
"unseen", whose every scene holds at least one of them (`write_demo_corpus(held_out_combos=..., num_unseen=...)`):
a test of composition, as `python -m rsclip_jax.demo --recipe synth2` uses it. Without them the corpus is as it was,
byte for byte.
"""

import dataclasses
import io
import os

import numpy as np
from PIL import Image, ImageDraw

from rsclip_jax.data.records import Caption, CaptionRecord, write_shard

CAPTION_MODEL = "procedural-demo-captions"
PROMPT_VERSION = "demo-v1"
ROLES = (
    "Observer of Details",
    "Interpreter of Context",
    "Compositional Analyst",
    "Narrative Setter",
    "Emotional Responder",
)
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "ring")
TEXTURES = ("plain", "striped", "dotted")
POSITIONS = {
    "upper left": (0.28, 0.28),
    "upper right": (0.72, 0.28),
    "lower left": (0.28, 0.72),
    "lower right": (0.72, 0.72),
    "centre": (0.5, 0.5),
}
BACKGROUNDS = {
    "pale grey": (200, 200, 200),
    "sky blue": (150, 200, 240),
    "sand": (225, 205, 160),
    "dark slate": (60, 70, 80),
}
LIGHTING = {"bright": 1.15, "dim": 0.6, "warm": (1.15, 1.0, 0.8), "cool": (0.85, 0.95, 1.15)}
MOODS = {
    "red": "energetic",
    "green": "calm",
    "blue": "serene",
    "yellow": "cheerful",
    "purple": "mysterious",
    "orange": "playful",
    "white": "clean",
    "black": "stark",
}
# Words web alt text carries that say nothing about the picture.
WEB_BOILERPLATE = ("stock photo", "clipart", "free download", "vector illustration", "hd wallpaper", "image")
CONTEXTS = {
    "circle": "a coin or a ball",
    "square": "a tile or a box seen from above",
    "triangle": "a sign or a sail",
    "ring": "a bracelet or a wheel",
}


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    texture: str
    size: str
    position: str

    @property
    def name(self) -> str:
        texture = "" if self.texture == "plain" else f"{self.texture} "
        return f"{self.size} {texture}{self.colour} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Scene:
    background: str
    lighting: str
    objects: tuple[SceneObject, ...]


def random_scene(rng: np.random.Generator) -> Scene:
    positions = rng.choice(list(POSITIONS), size=rng.integers(1, 3), replace=False)
    colours = rng.choice(list(COLOURS), size=len(positions), replace=False)
    objects = tuple(
        SceneObject(
            str(rng.choice(SHAPES)),
            str(colour),
            str(rng.choice(TEXTURES)),
            str(rng.choice(["small", "large"])),
            str(position),
        )
        for colour, position in zip(colours, positions)
    )
    return Scene(str(rng.choice(list(BACKGROUNDS))), str(rng.choice(list(LIGHTING))), objects)


def holds_combo(scene: Scene, combos) -> bool:
    """Whether an object of `scene` has one of the (colour, shape) `combos`."""
    return any((obj.colour, obj.shape) in combos for obj in scene.objects)


def draw_scene(rng: np.random.Generator, combos=(), *, require: bool = False) -> Scene:
    """The next random scene of `rng` that holds one of the (colour, shape) `combos` (`require`) or none of them:
    scenes that do not qualify are drawn and dropped. With no combos and not `require`, `random_scene(rng)`."""
    combos = {tuple(combo) for combo in combos}
    if require and not combos:
        raise ValueError("a scene required to hold one of no combinations")
    while True:
        scene = random_scene(rng)
        if holds_combo(scene, combos) == require:
            return scene


def render(scene: Scene, size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy = (v * size for v in POSITIONS[obj.position])
        r = size * (0.2 if obj.size == "large" else 0.11)
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "ring":
            draw.ellipse(box, outline=fill, width=max(2, int(r / 2.5)))
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        if obj.texture != "plain" and obj.shape != "ring":
            contrast = (0, 0, 0) if sum(fill) > 380 else (255, 255, 255)
            step = max(3, int(r / 2))
            for k in range(int(cx - r), int(cx + r), step):
                if obj.texture == "striped":
                    draw.line([(k, cy - r / 2), (k, cy + r / 2)], fill=contrast, width=1)
                else:
                    draw.point([(k, cy), (k, cy - r / 3), (k, cy + r / 3)], fill=contrast)
    gain = np.asarray(LIGHTING[scene.lighting], np.float32)
    return Image.fromarray(np.clip(np.asarray(image, np.float32) * gain, 0, 255).astype(np.uint8))


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def role_captions(scene: Scene) -> dict[tuple[str, str], str]:
    """(role, kind) -> caption text, each from the scene's content in that role's voice."""
    objs = scene.objects
    names = [f"a {o.name}" for o in objs]
    where = [f"a {o.name} in the {o.position}" for o in objs]
    first = objs[0]
    moods = _and([MOODS[o.colour] for o in objs])
    relation = (
        f"The {objs[0].colour} {objs[0].shape} sits in the {objs[0].position} while the {objs[1].colour} "
        f"{objs[1].shape} takes the {objs[1].position}, so the weight of the picture is split between them."
        if len(objs) == 2
        else f"A single {first.colour} {first.shape} occupies the {first.position}, leaving the "
        f"rest of the {scene.background} frame empty."
    )
    return {
        ("Observer of Details", "long"): f"Up close there is {_and(where)}. The {first.shape} has a {first.texture} "
        f"surface in {first.colour}. The background is a flat {scene.background} under {scene.lighting} light.",
        ("Observer of Details", "short"): f"{_and(names).capitalize()} on {scene.background}.",
        ("Interpreter of Context", "long"): f"This looks like a simple graphic where the {first.colour} {first.shape} "
        f"could stand for {CONTEXTS[first.shape]}. With {_and(names)} on a {scene.background} ground, it reads like a "
        f"page from a picture book lit in {scene.lighting} tones.",
        ("Interpreter of Context", "short"): f"A picture-book graphic of {_and(names)}.",
        ("Compositional Analyst", "long"): f"{relation} The {scene.background} background gives an even field and the "
        f"{scene.lighting} lighting keeps contrast {'high' if scene.lighting == 'bright' else 'moderate'}.",
        ("Compositional Analyst", "short"): f"{_and(where).capitalize()}.",
        ("Narrative Setter", "long"): f"Someone has just placed {_and(names)} on a {scene.background} table, and the "
        f"{scene.lighting} light suggests the moment before a game begins with the {first.colour} {first.shape}.",
        ("Narrative Setter", "short"): f"A game about to start with {_and(names)}.",
        ("Emotional Responder", "long"): f"The {_and([o.colour for o in objs])} against {scene.background} feels "
        f"{moods}, and the {scene.lighting} light deepens that mood around the {first.shape}.",
        ("Emotional Responder", "short"): f"{'An' if moods[0] in 'aeiou' else 'A'} {moods} scene of {_and(names)}.",
    }


def web_alt_text(scene: Scene, rng: np.random.Generator) -> str | None:
    """Short alt text as the web has it, e.g. "red circle on pale grey background": now and then a wrong colour
    or shape, a lost word or boilerplate, and about one image in ten without any."""
    if rng.random() < 0.1:
        return None
    first = scene.objects[0]
    colour, shape = first.colour, first.shape
    if rng.random() < 0.15:
        colour = str(rng.choice([c for c in COLOURS if c != colour]))
    if rng.random() < 0.1:
        shape = str(rng.choice([s for s in SHAPES if s != shape]))
    words = [colour, shape]
    if len(scene.objects) == 2 and rng.random() < 0.5:
        words += ["and", scene.objects[1].colour, scene.objects[1].shape]
    if rng.random() < 0.5:
        words += ["on", scene.background, "background"]
    if rng.random() < 0.2:
        del words[rng.integers(len(words))]
    if rng.random() < 0.3:
        words.insert(0 if rng.random() < 0.5 else len(words), str(rng.choice(WEB_BOILERPLATE)))
    return " ".join(words)


def scene_record(index: int, scene: Scene, image_size: int = 64, alt_text: str | None = None) -> CaptionRecord:
    image = render(scene, image_size)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    captions = tuple(
        Caption(role, kind, text, CAPTION_MODEL, PROMPT_VERSION) for (role, kind), text in role_captions(scene).items()
    )
    return CaptionRecord(f"demo/{index:06d}", buffer.getvalue(), (image_size, image_size), captions, alt_text)


def write_demo_corpus(
    directory: str,
    *,
    num_train: int,
    num_heldout: int,
    seed: int = 0,
    records_per_shard: int = 500,
    image_size: int = 64,
    held_out_combos: tuple[tuple[str, str], ...] = (),
    num_unseen: int = 0,
) -> dict[str, list[str]]:
    """Writes train and held-out shards of `image_size`-px images under `directory`; returns their paths per
    split. With `held_out_combos` ((colour, shape) pairs), no train or held-out scene holds any of them, and with
    `num_unseen` a third split "unseen" follows, each of its scenes holding at least one. The splits are drawn in
    that order from one stream of scenes (a scene that does not qualify for its split is dropped)."""
    unknown = [combo for combo in held_out_combos if combo[0] not in COLOURS or combo[1] not in SHAPES]
    if unknown or (num_unseen and not held_out_combos):
        raise ValueError(
            f"held_out_combos {list(held_out_combos)} must be (colour, shape) pairs of {list(COLOURS)} and "
            f"{list(SHAPES)}, at least one where num_unseen > 0"
        )
    rng = np.random.default_rng(seed)
    alt_rng = np.random.default_rng([seed, 1])  # its own stream: the scenes and captions are as without alt text
    os.makedirs(directory, exist_ok=True)
    splits = {"train": num_train, "heldout": num_heldout, **({"unseen": num_unseen} if num_unseen else {})}
    paths, index = {}, 0
    for split, count in splits.items():
        paths[split] = []
        for shard, start in enumerate(range(0, count, records_per_shard)):
            records = []
            for i in range(min(records_per_shard, count - start)):
                scene = draw_scene(rng, held_out_combos, require=split == "unseen")
                records.append(scene_record(index + i, scene, image_size, alt_text=web_alt_text(scene, alt_rng)))
            index += len(records)
            path = os.path.join(directory, f"{split}-{shard:05d}.array_record")
            write_shard(path, records)
            paths[split].append(path)
    return paths
