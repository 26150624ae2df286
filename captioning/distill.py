"""`python -m captioning distill`: fine-tunes a student VLM on a judge's exported judgements.

Each judgement with a score becomes one example (the judge prompt, the record's image as the judge saw
it, the teacher's answer) with loss on the answer tokens only. The student is saved as a plain model folder
(LoRA adapters merged in) that `captioning filter --judge-model` serves with either engine.
"""

import json
import os
import tempfile

import torch
import torch.nn.functional as F
import transformers

from captioning.engines import chat_prompt
from captioning.images import record_for_captioner
from rsclip_jax.data.records import CaptionRecord, read_shard

_FIELDS = {"messages": (list,), "answer": (str,), "shard": (str,), "record": (int,), "max_pixels": (int,)}
# The language model's projections: the judge's skill is in how it answers; the vision tower stays as it is.
_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# Padding per token-aligned key; padded input ids are masked out by attention_mask and labels, so any id serves.
_PAD = {"input_ids": 0, "attention_mask": 0, "mm_token_type_ids": 0, "labels": -100}


def load_judgements(path: str) -> tuple[list[tuple[list, CaptionRecord, int, str]], int]:
    """(messages, caption record, the captioner's max_pixels, answer) per judgement with a score, and how many had
    none (the answer did not parse, or the judge could not take the request): a student taught those would only
    learn to fail."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--judgements {path} does not exist")
    scored, unscored = [], 0
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                judgement = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n}: not JSON ({e})") from None
            if not isinstance(judgement, dict):
                raise ValueError(f"{path} line {n}: expected a JSON object")
            if "score" not in judgement:
                raise ValueError(f"{path} line {n}: missing 'score'")
            if judgement["score"] is None:
                unscored += 1
                continue
            for field, types in _FIELDS.items():
                if field not in judgement:
                    raise ValueError(
                        f"{path} line {n}: missing {field!r} (export with `captioning filter "
                        f"--export-judgements` from this version)"
                    )
                if not isinstance(judgement[field], types) or isinstance(judgement[field], bool):
                    raise ValueError(f"{path} line {n}: {field!r} has the wrong type")
            if not os.path.isfile(judgement["shard"]):
                raise FileNotFoundError(f"{path} line {n}: shard {judgement['shard']} does not exist")
            scored.append((n, judgement))
    if not scored:
        raise ValueError(f"{path} holds no judgement with a score ({unscored} without one)")
    wanted = {(j["shard"], j["record"]) for _, j in scored}
    records = {}  # (shard, record) -> the judged records only, each shard read once
    for shard in sorted({shard for shard, _ in wanted}):
        records.update({(shard, r): record for r, record in enumerate(read_shard(shard)) if (shard, r) in wanted})
    for n, judgement in scored:
        if (judgement["shard"], judgement["record"]) not in records:
            raise ValueError(f"{path} line {n}: shard {judgement['shard']} has no record {judgement['record']}")
    examples = [(j["messages"], records[j["shard"], j["record"]], j["max_pixels"], j["answer"]) for _, j in scored]
    return examples, unscored


class _Examples(torch.utils.data.Dataset):
    """Prepared lazily, as the judge's engines prepare a request: the image the judge saw (`record_for_captioner`),
    the prompt by the chat template, the image tokens by the processor."""

    def __init__(self, examples, processor):
        self.examples, self.processor = examples, processor

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        messages, record, max_pixels, answer = self.examples[i]
        prompt = chat_prompt(self.processor, messages)
        full = self.processor.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the student's chat template does not render an answered prompt as the prompt and more")
        image = record_for_captioner(record, max_pixels)
        inputs = self.processor(text=[prompt], images=[image], return_tensors="pt")
        # The answer and its end-of-turn tokens, tokenized apart from the prompt as in generation.
        target = self.processor.tokenizer(full[len(prompt) :], add_special_tokens=False, return_tensors="pt")
        target_ids = target["input_ids"]
        prompt_len = inputs["input_ids"].shape[1]
        # Answer tokens are attended and of token type text (0).
        appended = {
            "input_ids": target_ids,
            "attention_mask": torch.ones_like(target_ids),
            "mm_token_type_ids": torch.zeros_like(target_ids),
        }
        example = {
            key: torch.cat([value, appended[key]], dim=1) if key in appended else value for key, value in inputs.items()
        }
        example["labels"] = torch.cat([torch.full((1, prompt_len), -100), target_ids], dim=1)
        return example


def _collate(examples):
    """Right-pads the token-aligned tensors; concatenates the image tensors (patches, grids) as they are."""
    longest = max(e["input_ids"].shape[1] for e in examples)
    return {
        key: torch.cat(
            [
                F.pad(e[key], (0, longest - e[key].shape[1]), value=_PAD[key]) if key in _PAD else e[key]
                for e in examples
            ]
        )
        for key in examples[0]
    }


def distill(
    judgements,
    student,
    out,
    *,
    lora,
    lora_rank,
    epochs,
    max_steps,
    learning_rate,
    batch_size,
    gradient_accumulation_steps,
    dtype,
    seed,
) -> dict:
    """Trains the student and saves it to `out`; returns the summary also written to `out/distill.json`. No
    defaults here: each is written once, in the CLI."""
    if not os.path.isdir(student):
        raise FileNotFoundError(f"--student {student} is not a model folder")
    examples, unscored = load_judgements(judgements)
    processor = transformers.AutoProcessor.from_pretrained(student)
    model = transformers.AutoModelForImageTextToText.from_pretrained(student, dtype=getattr(torch, dtype))
    if lora:
        import peft

        model = peft.get_peft_model(
            model, peft.LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=_LORA_TARGETS)
        )
    with tempfile.TemporaryDirectory() as scratch:  # the trainer wants an output folder; nothing is kept there
        args = transformers.TrainingArguments(
            output_dir=scratch,
            num_train_epochs=epochs,
            max_steps=max_steps,
            learning_rate=learning_rate,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            bf16=dtype == "bfloat16",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            remove_unused_columns=False,
            seed=seed,
        )
        dataset = _Examples(examples, processor)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, data_collator=_collate)
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if lora:
        model = model.merge_and_unload()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    summary = {
        "steps": trainer.state.global_step,
        "loss_start": round(losses[0], 4),
        "loss_end": round(losses[-1], 4),
        "examples": len(examples),
        "skipped_unscored": unscored,
        "lora": lora,
    }
    with open(os.path.join(out, "distill.json"), "w") as f:
        json.dump(summary, f)
    return summary
