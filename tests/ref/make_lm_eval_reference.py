#!/usr/bin/env python3
"""Scores the tasks of tests/data/eval/ref/ with lm-evaluation-harness (PyPI
`lm_eval`, its Hugging Face backend) on a tiny random model, so finmoe's
evaluation harness is checked against lm-eval itself without needing it at
test time.

    python tests/ref/make_lm_eval_reference.py tests/data/eval/ref

Exit 77 when a package is missing (the live test skips).

Writes into that directory:
  model/            a byte-level BPE tokenizer trained here with HF `tokenizers`
                    on the task texts (Qwen2's pre-tokenizer, 384 tokens) and a
                    seeded random Qwen2 model (transformers, float32, 128-token
                    context so few-shot prompts and long texts are truncated
                    and windowed as lm-eval does)
  reference.json    per task: lm-eval's aggregated metrics and, per document,
                    the prompts (arguments), the per-choice log-likelihoods,
                    greedy flags, generations and per-document metrics; for
                    ref_gen_filters one sample per (filter, document) with the
                    filter's name and answer (filtered_resps)
  filters.json      lm-eval's filter pipelines (lm_eval.filters) applied to
                    hand-written responses: pipeline, responses per document,
                    the answers (or the error lm-eval raises)

Everything is deterministic (fixed seeds, fixed training text).
Requires: torch, transformers, tokenizers, lm_eval (pip install lm_eval).
"""
import json
import os
import shutil
import sys
import tempfile

try:
    import lm_eval
    import torch
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
TASKS = ["ref_mc", "ref_mc_random", "ref_ppl", "ref_gen", "ref_gen_filters"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SYSTEM = "You are a finance tutor."


def training_text(ref_dir):
    lines = []
    for name in ("ref_mc.jsonl", "ref_text.jsonl"):
        with open(os.path.join(ref_dir, name), encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                lines.append(d.get("text") or "Question: " + d["question"] + "\nAnswer: " + " ".join(d["choices"]))
    return lines


def build_tokenizer(ref_dir, out_dir):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=384, min_frequency=2, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_text(ref_dir) * 3, trainer=trainer)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
                   "bos_token": None, "pad_token": "<|endoftext|>", "add_bos_token": False,
                   "model_max_length": 128, "clean_up_tokenization_spaces": False,
                   "chat_template": CHATML}, f, indent=2)
    return tok.get_vocab_size()


def build_model(vocab, out_dir):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=0, initializer_range=0.2)
    model = transformers.Qwen2ForCausalLM(cfg).to(torch.float32).eval()
    model.save_pretrained(out_dir, safe_serialization=True)


def lm_eval_tasks(ref_dir, tmp):
    # lm-eval (HF datasets) resolves data_files against the working directory:
    # copy the YAMLs with absolute paths
    import yaml
    for t in TASKS:
        with open(os.path.join(ref_dir, t + ".yaml"), encoding="utf-8") as f:
            y = yaml.safe_load(f)
        if "include" in y:  # lm-eval resolves includes itself; the base is copied too
            continue
        files = y["dataset_kwargs"]["data_files"]
        for k in files:
            files[k] = os.path.abspath(os.path.join(ref_dir, files[k]))
        with open(os.path.join(tmp, t + ".yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(y, f, allow_unicode=True)


# Responses per document and pipelines for filters.json: lm-eval's own
# filter classes decide the answers.
FILTER_CASES = [
    ("gsm8k strict", [{"function": "regex"}, {"function": "take_first"}],
     [["The answer is 42.\n#### 42"], ["#### -1,234.5 and #### 7"], ["no number"]]),
    ("gsm8k flexible", [{"function": "regex", "group_select": -1,
                         "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"}, {"function": "take_first"}],
     [["$1,000 or 5"], ["x 7 y"], ["nothing"], ["12 then 3.5."]]),
    ("inline flag and named group", [{"function": "regex", "regex_pattern": "(?i)answer:\\s*(?P<ans>[a-d])",
                                       "fallback": "?"}, {"function": "uppercase"}, {"function": "take_first"}],
     [["Answer: c"], ["so the answer:b"], ["ANSWER: x"]]),
    ("empty groups", [{"function": "regex", "regex_pattern": "(a*)(b*)x"}, {"function": "take_first"}],
     [["x"], ["abx"], ["bbx ax"]]),
    ("optional group", [{"function": "regex", "regex_pattern": "(\\d)?z", "group_select": 1},
                        {"function": "take_first"}],
     [["z 5z"], ["1z2z"]]),
    ("dotall and a literal ]", [{"function": "regex", "regex_pattern": "(?s)says:(.+?)[]!]"},
                                {"function": "remove_whitespace"}, {"function": "take_first"}],
     [["he says: a\nb] and c!"], ["says:x.y!"], ["nothing"]]),
    ("strip and case", [{"function": "remove_whitespace"}, {"function": "lowercase"}, {"function": "take_first"}],
     [["  Yes\n"], ["\u3000答案 A\u2003"], ["\t\tNO  x "]]),
    ("map", [{"function": "map", "mapping_dict": {"A": "0", "B": "1"}, "default_value": "-1"},
             {"function": "take_first"}],
     [["A"], ["B"], ["C"]]),
    ("vote", [{"function": "majority_vote"}, {"function": "take_first"}],
     [["b", "a", "b", "a"], ["a", "b", "b"], ["x", "y", "z"]]),
    ("first k then vote", [{"function": "take_first_k", "k": 2}, {"function": "majority_vote"},
                           {"function": "take_first"}],
     [["b", "a", "a"], ["c", "c", "d"]]),
]


def filter_cases():
    from lm_eval.filters import build_filter_ensemble
    out = []
    for name, steps, resps in FILTER_CASES:
        comps = [[s["function"], {k: v for k, v in s.items() if k != "function"} or None] for s in steps]
        ens = build_filter_ensemble(name, comps)
        answers = resps
        for f in ens.filters:
            answers = f().apply(answers, [{} for _ in resps])
        out.append({"name": name, "filter": steps, "responses": resps, "answers": list(answers)})
    return out


def main():
    ref_dir = sys.argv[1]
    model_dir = os.path.join(ref_dir, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    os.makedirs(model_dir)
    vocab = build_tokenizer(ref_dir, model_dir)
    build_model(vocab, model_dir)

    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        lm_eval_tasks(ref_dir, tmp)
        lm = HFLM(pretrained=model_dir, device="cpu", dtype="float32", batch_size=1)
        for t in TASKS:
            if not os.path.exists(os.path.join(tmp, t + ".yaml")):
                shutil.copy(os.path.join(ref_dir, t + ".yaml"), tmp)
        tm = TaskManager(include_path=tmp)
        res = lm_eval.simple_evaluate(model=lm, tasks=TASKS, task_manager=tm, log_samples=True,
                                      random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                      fewshot_random_seed=1234)
        # ref_mc again with the tokenizer's chat template, a system
        # instruction and few-shot examples as turns
        chat = lm_eval.simple_evaluate(model=lm, tasks=["ref_mc"], task_manager=tm, log_samples=True,
                                       apply_chat_template=True, fewshot_as_multiturn=True,
                                       system_instruction=SYSTEM, random_seed=0, numpy_random_seed=0,
                                       torch_random_seed=0, fewshot_random_seed=1234)
        res["results"]["ref_mc_chat"] = chat["results"]["ref_mc"]
        res["n-shot"]["ref_mc_chat"] = chat["n-shot"]["ref_mc"]
        res["samples"]["ref_mc_chat"] = chat["samples"]["ref_mc"]
    out = {"lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?",
           "transformers_version": transformers.__version__, "torch_version": torch.__version__,
           "max_length": lm.max_length, "chat_system": SYSTEM, "tasks": {}}
    for t in TASKS + ["ref_mc_chat"]:
        samples = []
        # lm-eval logs one sample per (filter, document), filter by filter
        filters = list(dict.fromkeys(s["filter"] for s in res["samples"][t]))
        for s in sorted(res["samples"][t], key=lambda s: (filters.index(s["filter"]), s["doc_id"])):
            sample = {
                "doc_id": s["doc_id"],
                "arguments": [list(a) if not isinstance(a, dict) else a for a in
                              [[x for x in args.values()] if isinstance(args, dict) else args
                               for args in s["arguments"]]],
                "resps": s["resps"],
                "metrics": {m: s[m] for m in s["metrics"] if m in s},
            }
            if filters != ["none"]:
                sample["filter"] = s["filter"]
                sample["filtered_resps"] = s["filtered_resps"]
            samples.append(sample)
        out["tasks"][t] = {"results": res["results"][t], "n-shot": res["n-shot"][t], "samples": samples}
    with open(os.path.join(ref_dir, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False, default=str)
        f.write("\n")
    print("wrote", os.path.join(ref_dir, "reference.json"))
    with open(os.path.join(ref_dir, "filters.json"), "w", encoding="utf-8") as f:
        json.dump(filter_cases(), f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", os.path.join(ref_dir, "filters.json"))


if __name__ == "__main__":
    main()
