"""The `adapters` library's documented training recipe, timed: run in ITS venv by ``time_to_accuracy.py``.

The recipe of its training notebook (01_Adapter_Training) and docs: tokenise the data set with
``datasets.Dataset.map`` padding every text to ``max_length``, ``AutoAdapterModel`` + ``add_adapter`` +
``add_classification_head`` + ``train_adapter``, and ``AdapterTrainer`` with ``TrainingArguments`` at their defaults
except the settings both libraries share (epochs, learning rate, batch sizes, evaluation interval, seed). A
callback records the Unix time and dev accuracy at the end of every evaluation. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
from adapters import AdapterTrainer, AutoAdapterModel
from datasets import load_dataset
from transformers import AutoTokenizer, EvalPrediction, TrainerCallback, TrainingArguments


class _Record(TrainerCallback):
    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.history.append({"step": state.global_step, "time": time.time(), "accuracy": metrics["eval_acc"]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--data-dir", required=True, help="train.jsonl and dev.jsonl with text/label rows")
    parser.add_argument("--labels", nargs="+", required=True)
    parser.add_argument("--epochs", type=float, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--eval-batch-size", type=int, required=True)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--eval-steps", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    label_ids = {name: index for index, name in enumerate(args.labels)}

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    dataset = load_dataset(
        "json",
        data_files={"train": f"{args.data_dir}/train.jsonl", "validation": f"{args.data_dir}/dev.jsonl"},
    )

    def encode_batch(batch):
        encoded = tokenizer(batch["text"], max_length=args.max_length, truncation=True, padding="max_length")
        encoded["labels"] = [label_ids[label] for label in batch["label"]]
        return encoded

    dataset = dataset.map(encode_batch, batched=True, remove_columns=["text", "label"])
    dataset.set_format(type="torch")

    model = AutoAdapterModel.from_pretrained(args.model_dir)
    model.add_adapter("rotten_tomatoes", config="seq_bn")
    model.add_classification_head("rotten_tomatoes", num_labels=len(args.labels))
    model.train_adapter("rotten_tomatoes")

    def compute_accuracy(p: EvalPrediction) -> dict[str, float]:
        return {"acc": float((np.argmax(p.predictions, axis=1) == p.label_ids).mean())}

    record = _Record()
    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch,
            learning_rate=args.lr,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.eval_batch_size,
            eval_strategy="steps",
            eval_steps=args.eval_steps,
            logging_steps=args.eval_steps,
            save_strategy="no",
            report_to=[],
            seed=args.seed,
            remove_unused_columns=False,
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = AdapterTrainer(
            model=model,
            args=training_args,
            train_dataset=dataset["train"],
            eval_dataset=dataset["validation"],
            compute_metrics=compute_accuracy,
            callbacks=[record],
        )
        trainer.train()
        if not record.history or record.history[-1]["step"] != trainer.state.global_step:
            trainer.evaluate()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        json.dumps({"lib": "adapters", "history": record.history, "trainable": trainable, "end": time.time()})
    )


if __name__ == "__main__":
    main()
