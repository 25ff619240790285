"""The ``wavedistill`` argument parser: every command, its flags and the function that runs it (a declarative table)."""

from __future__ import annotations

import argparse

from ..data import DataSplit
from .args import add_distill_args, add_held_out_args
from .argtypes import int_list, json_dict, name_list
from .commands import (cmd_bench, cmd_cache_teacher, cmd_compare, cmd_demo, cmd_distill, cmd_eval, cmd_generate,
                       cmd_layers, cmd_lm_eval, cmd_make_tasks, cmd_mixers, cmd_report)
from .lab import add_lab_parsers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavedistill", description="replace the attention of pretrained "
                                     "transformers with causal wave token mixers, by distillation; and train wave "
                                     "models from scratch")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("distill", help="replace attention with a wave mixer and distill from the teacher")
    add_distill_args(p)
    p.set_defaults(fn=cmd_distill)

    p = sub.add_parser("kd", help="distill the teacher into a separate, smaller student (distill with --student)")
    add_distill_args(p)
    p.set_defaults(fn=cmd_distill)

    p = sub.add_parser("cache-teacher", help="write the teacher's top-k next-token targets for the training split, "
                       "for distill --teacher-cache")
    p.add_argument("--teacher", required=True, help="model folder or hub id")
    p.add_argument("--data", required=True, help="local .txt/.jsonl/.parquet file or hub dataset (the run's --data)")
    p.add_argument("--output-dir", required=True, help="a new folder for the cache")
    p.add_argument("--overwrite", action="store_true", help="delete what --output-dir holds and write the cache there")
    p.add_argument("--top-k", type=int, default=32, help="tokens kept per position (default: 32, 198 bytes per token)")
    p.add_argument("--seq-len", type=int, default=256, help="window length: the run's --seq-len (default: 256)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per teacher forward (default: 16)")
    p.add_argument("--n-samples", type=int, default=0, help="documents to read, as the run's --n-samples (default: 0)")
    p.add_argument("--val-frac", type=float, default=DataSplit.val_frac,
                   help=f"the run's val_frac (default: {DataSplit.val_frac})")
    p.add_argument("--test-frac", type=float, default=DataSplit.test_frac,
                   help=f"the run's test_frac (default: {DataSplit.test_frac})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(fn=cmd_cache_teacher)

    p = sub.add_parser("layers", help="per-layer report: transfer loss and held-out KL with only that layer replaced")
    add_distill_args(p)
    p.add_argument("--transfer-steps", type=int, default=500,
                   help="steps of the all-layers transfer run (when no --stages / recipe stages are given)")
    p.add_argument("--select-keep", type=int, metavar="K",
                   help="also choose K layers to keep as attention, greedily by val KL; writes keep_attention.txt")
    p.add_argument("--from-run", metavar="RUN", help="score this finished distill run's student (no transfer run)")
    p.set_defaults(fn=cmd_layers)

    p = sub.add_parser("compare", help="the same recipe for several mixers: one table and a top-5 vs tokens plot")
    add_distill_args(p)
    p.add_argument("--mixers", required=True, help="comma-separated mixer names, e.g. learned_gate,fnet")
    p.set_defaults(fn=cmd_compare)

    add_lab_parsers(sub)

    p = sub.add_parser("eval", help="score a student against its teacher on held-out text: agreement, recall, "
                       "context length, lm-eval")
    p.add_argument("--student", required=True, help="run folder (with adapter/) or adapter folder")
    p.add_argument("--data", help="local .txt/.jsonl/.parquet file or hub dataset (default: the run's --data)")
    add_held_out_args(p, ["test", "val", "all"])
    p.add_argument("--seq-len", type=int, help="default: the run's config.yaml, else 256")
    p.add_argument("--max-windows", type=int, default=0, help="0 = every window")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--base", help="base model (default: the one named in the adapter)")
    p.add_argument("--teacher", help="a separate student's teacher (default: the one named in its adapter)")
    p.add_argument("--output-dir", help="where metrics.json / samples.md go (default: eval_*.json in --student)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--mixer-attrs", type=json_dict, default=None,
                   help='set attributes of every mixer before scoring, e.g. \'{"use_linear": false}\' (ablations)')
    g = p.add_argument_group("the suite (results in OUTPUT_DIR/suite or STUDENT/suite: suite.md, JSON, plots)")
    g.add_argument("--suite", default="agreement",
                   help="comma-separated parts: agreement (top-k / KL / perplexity, the default), recall, length, "
                        "lm-eval; or all")
    g.add_argument("--induction-lengths", type=int_list, help="recall: L of the repeated random tokens "
                   "(default: 16,32,64,128,256 where they fit the context)")
    g.add_argument("--passage-lengths", type=int_list, help="recall: L of the repeated held-out passages "
                   "(default: 32,64,128,256 where they fit)")
    g.add_argument("--sequences", type=int, default=100, help="recall: random sequences per length (default: 100)")
    g.add_argument("--passages", type=int, default=128, help="recall: held-out passages per length (default: 128)")
    g.add_argument("--fillers", type=int_list, help="recall: passkey filler lengths (default: 0,32,64,128,256)")
    g.add_argument("--trials", type=int, default=100, help="recall: passkey trials per form and filler (default: 100)")
    g.add_argument("--lengths", type=int_list, help="length: window lengths (default: 1x, 2x, 4x --seq-len, the "
                   "teacher's context and twice it)")
    g.add_argument("--decode-tokens", type=int, default=32, help="length: timed decode steps per length (default: 32)")
    g.add_argument("--lm-eval-limit", type=float, help="lm-eval: examples per task (default: all)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("lm-eval", help="lm-evaluation-harness tasks on a student run (or any model), its teacher and "
                       "the no-mixing baseline: lm-eval's JSON and one teacher-vs-student table")
    p.add_argument("model", metavar="RUN|MODEL", help="a student run or adapter folder, or a Hugging Face model "
                   "folder or hub id")
    p.add_argument("--tasks", required=True, type=name_list, help="lm-eval task names, e.g. piqa,arc_easy,hellaswag,"
                   "lambada_openai (hub) or story_ending,final_word (make-tasks)")
    p.add_argument("--include-path", help="a folder of task YAMLs (make-tasks output)")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--limit", type=float, help="examples per task (>= 1), or a fraction in (0, 1) (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--with-teacher", action="store_true", help="also the run's teacher, on the same examples")
    p.add_argument("--teacher", help="compare with this model instead of the run's teacher (implies --with-teacher)")
    p.add_argument("--with-no-mixing", action="store_true", help="also the teacher with attention zeroed (a run only)")
    p.add_argument("--output-dir", help="default: RUN/lm_eval (required for a plain model)")
    p.add_argument("--overwrite", action="store_true", help="replace another evaluation's results in --output-dir")
    p.add_argument("--base", help="base model of the adapter (default: the one it names)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--mixer-attrs", type=json_dict, default=None, help="as for eval (needs --output-dir)")
    p.set_defaults(fn=cmd_lm_eval)

    p = sub.add_parser("make-tasks", help="lm-eval task YAMLs + JSONL (story_ending, final_word) from the held-out "
                       "documents of your own text")
    p.add_argument("--model", required=True, help="the student run (its data split and tokenizer) or a model folder "
                   "/ hub id (its tokenizer and context)")
    p.add_argument("--data", help="local .txt/.jsonl/.parquet file or hub dataset (default: the run's --data)")
    p.add_argument("--output-dir", required=True, help="a new folder for the tasks (lm-eval --include-path)")
    add_held_out_args(p, ["test", "val"])
    p.add_argument("--choices", type=int, default=4, help="story_ending: endings per example (default: 4)")
    p.add_argument("--max-examples", type=int, default=0, help="per task; 0 = all (default)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_make_tasks)

    p = sub.add_parser("generate", help="sample from a student")
    p.add_argument("--student", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate, >= 1 (default: 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), > 0 samples")
    p.add_argument("--base")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("report", help="one Markdown table from the metrics.json of several runs")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--output", help="also write the table to this file")
    p.add_argument("--suite", action="store_true", help="instead: the runs' eval suites side by side (recall, "
                   "context length, lm-eval), teacher and no-mixing rows from the first")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("mixers", help="list registered mixers")
    p.set_defaults(fn=cmd_mixers)

    p = sub.add_parser("bench", help="time and memory of each mixer vs SDPA causal attention")
    p.add_argument("--d-model", type=int, default=256, help="width of the one layer timed (default: 256)")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per timed call (default: 1)")
    p.add_argument("--seq-lens", default="256,512,1024,2048,4096,8192,16384",
                   help="sequence lengths, comma-separated (default: 256 to 16384; the long ones take minutes on CPU)")
    p.add_argument("--mixers", default="all", help="comma-separated mixer names, or all (default)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per cell; the median is kept (default: 3)")
    p.add_argument("--memory-limit-gb", type=float, default=8.0, help="skip sizes whose estimate exceeds this")
    p.add_argument("--output-dir", default="runs/bench", help="bench.json, bench.md, bench.png (default: runs/bench)")
    p.add_argument("--decode", action="store_true",
                   help="time per generated token and decoding memory after prompts of --prompts tokens instead")
    p.add_argument("--prompts", default="512,1024,2048,4096,8192,16384", help="(--decode) prompt lengths")
    p.add_argument("--decode-tokens", type=int, default=32, help="(--decode) timed tokens per cell")
    p.add_argument("--layers", type=int, default=4, help="(--decode) layers of the whole-model table")
    p.add_argument("--loss", action="store_true", help="peak memory of the KD loss alone, dense vs chunked, instead")
    p.add_argument("--loss-positions", type=int, default=16384, help="(--loss) positions")
    p.add_argument("--loss-vocab", type=int, default=151936, help="(--loss) vocabulary size (Qwen3's by default)")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("demo", help="offline end-to-end run: build a tiny teacher, distill, evaluate, generate")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--mixer", default="learned_gate")
    p.add_argument("--steps", type=int, default=200, help="distillation steps")
    p.add_argument("--teacher-steps", type=int, default=600,
                   help="teacher pre-training steps (default 600: by then it copies names from earlier in a story)")
    p.add_argument("--stories", type=int, default=1500, help="synthetic stories to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="run the student again over a finished demo's")
    p.set_defaults(fn=cmd_demo)
    return parser
