"""`lutc quantize` (a lutc CLI plugin: register(subparsers)); `lutc eval` is the runtime's."""

from __future__ import annotations


__all__ = ["register", "USER_ERRORS"]

# What these subcommands raise for a problem the user can fix (a missing model, a bad checkpoint,
# an unwritable --out...): lutc.cli.main, which dispatches them, reports those as one line and
# exit code 2. (quant does not import lutc, so it cannot raise lutc's UsageError.)
USER_ERRORS = (ValueError, OSError)


# --ft-* flags; unset: FTConfig's defaults
_FT_KNOBS = ("epochs", "lr", "batch", "samples", "e2e_epochs", "e2e_lr", "e2e_loss", "rechoose", "schedule",
             "block_loss")


def cmd_quantize(args) -> int:
    from .checkpoint import save_checkpoint
    from .model_quant import quantize_model
    qm = quantize_model(args.model, args.bits, args.group_size, args.method, calib=args.calib,
                        lm_head_bits=args.lm_head_bits, lm_head_group_size=args.lm_head_group_size,
                        nsamples=args.nsamples, seqlen=args.seqlen, progress=not args.quiet,
                        act_order=args.act_order, damp=args.damp, seed=args.seed,
                        ft={k: v for k in _FT_KNOBS if (v := getattr(args, "ft_" + k)) is not None}
                        if args.method == "hlq-ft" else None,
                        offload_dir=args.offload_dir)
    out = save_checkpoint(qm, args.out)
    print(f"wrote {out}: {qm.meta['method']} W{qm.meta['bits']} g{qm.meta['group_size']} "
          f"(lm_head W{qm.meta['lm_head_bits']} g{qm.meta['lm_head_group_size']}), "
          f"{len(qm.linears)} quantized linears, {qm.meta['seconds']:.1f}s")
    return 0


def register(subparsers) -> None:
    import argparse

    from .model_quant import MODEL_METHODS
    q = subparsers.add_parser("quantize", help="quantize a LLaMA-family model into a lutc checkpoint directory")
    q.add_argument("model", help='"smollm2-135m", a .gguf file or a Hugging Face model directory')
    q.add_argument("--bits", type=int, required=True, choices=(1, 2, 3, 4))
    q.add_argument("--group-size", type=int, default=128)
    q.add_argument("--method", choices=MODEL_METHODS, default="hlq-gptq")
    q.add_argument("--out", required=True, help="checkpoint directory (written atomically)")
    q.add_argument("--lm-head-bits", type=int, default=4, choices=(1, 2, 3, 4))
    q.add_argument("--lm-head-group-size", type=int, default=128)
    q.add_argument("--calib", default=None,
                   help="calibration text file, or builtin:mix (several CPython-shipped texts); default: the "
                        "built-in pydoc corpus (hlq-ft at W4: builtin:mix)")
    q.add_argument("--nsamples", type=int, default=32)
    q.add_argument("--seqlen", type=int, default=512)
    q.add_argument("--act-order", action="store_true", help="GPTQ act-order (static groups)")
    q.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening, fraction of mean(diag H)")
    q.add_argument("--seed", type=int, default=0, help="calibration windows and fine-tuning order")
    # hlq-ft knobs: unset means quant.finetune.FTConfig's default (docs/quantization.md)
    q.add_argument("--ft-epochs", type=int, default=None, help="hlq-ft: epochs over the calibration samples per block")
    q.add_argument("--ft-lr", type=float, default=None, help="hlq-ft: Adam learning rate (relative to the scales)")
    q.add_argument("--ft-batch", type=int, default=None, help="hlq-ft: calibration samples per step")
    q.add_argument("--ft-samples", type=int, default=None,
                   help="hlq-ft: calibration samples (of --nsamples) to fine-tune on")
    q.add_argument("--ft-e2e-epochs", type=int, default=None,
                   help="hlq-ft: epochs of the end-to-end pass over the scales only (0: none)")
    q.add_argument("--ft-e2e-lr", type=float, default=None, help="hlq-ft: Adam learning rate of the end-to-end pass")
    q.add_argument("--ft-e2e-loss", choices=("ce", "kl"), default=None,
                   help="hlq-ft: end-to-end objective: ce (next-token loss) or kl (distill the float model)")
    q.add_argument("--ft-schedule", choices=("constant", "cosine"), default=None,
                   help="hlq-ft: block-wise learning-rate schedule")
    q.add_argument("--ft-rechoose", action=argparse.BooleanOptionalAction, default=None,
                   help="hlq-ft: re-choose the codes after every epoch (GPTQ over the trained grid)")
    q.add_argument("--ft-block-loss", choices=("mse", "rel"), default=None,
                   help="hlq-ft: block-wise objective: mse, or rel (each token's error relative to its norm)")
    q.add_argument("--offload-dir", default=None,
                   help="write each finished block's codes here and memory-map them back (models larger than RAM)")
    q.add_argument("--quiet", action="store_true", help="no progress output")
    q.set_defaults(fn=cmd_quantize)
