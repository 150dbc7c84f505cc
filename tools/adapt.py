"""Self-supervised adaptation: fine-tune a stage-2 SelfHDR network on your own unlabeled brackets.

    python tools/adapt.py --brackets DIR --checkpoint CKPT --network AHDRNet --out adapted.pth
        [--stage1 CKPT1] [--resume] [--vgg_weights auto] [--compare_dir D]

``DIR`` holds one sub-folder per bracket, as ``tools/merge_brackets.py --input_dir`` takes them (JPEG/PNG/TIFF or
camera RAW; exposures from EXIF/RAW metadata or the sub-folder's ``exposure.txt`` in stops; ``--response`` as in
merge_brackets). No ground truth is used: the brackets themselves give both labels of the method's stage 2.

1. **Read** each bracket exactly as merge_brackets does (``photo.merge.merge``: exposure check, pre-alignment,
   camera response, frames re-encoded with the training gamma); that run of the *given* network is also the
   "before" image of the comparison. ``--max_side`` downscales the frames used for training (memory: the training
   set is cached in RAM). A bracket that fails is reported and skipped.
2. **Colour component** Y_color: the frames are written as a SIGGRAPH17-layout scene
   (``Training/<bracket>/``, 16-bit TIFFs + ``exposure.txt``) and aligned by ``data.align_split.prepare_scene``
   (DIS optical flow, the medium-first triangle merge, then NL-means denoising per brightness band,
   util/label_denoise.py: the merge carries the inputs' own noise), the same code that builds ``Training_align``
   for training. ``--denoise_labels off`` passes ``AlignConfig(label_denoise=False)``.
3. **Structure component** Y_stru: ``test.py --stage0_inference`` runs the structure network on the aligned
   frames. That network is ``--stage1 CKPT1`` (the stage-1 network the checkpoint was trained with: the method's
   structure component) or, when ``--stage1`` is not given, the stage-2 checkpoint itself (said in the log).
4. **Fine-tune** with ``train.py`` (``--model selfhdr2``: masked L1 to Y_color + VGG19 loss to Y_stru, the medium
   frame's training noise; no colour loss where the medium frame is clipped, where the label is the short frame
   alone: ``--colour_skip_clipped``), starting from ``--checkpoint`` (``--load_path``), random crops, for ``--iters``
   iterations split into epochs of at most ``--save_every`` iterations; each epoch is checkpointed atomically.
5. Write ``--out`` (release format ``{'state_dict': bare keys}``, atomically) and one comparison sheet per bracket
   in ``--compare_dir`` (default ``<out>_compare/``): the medium input, the network before and after, tone-mapped
   (``--tonemap``) and labelled.

Work state lives in ``<out>.partial/`` (prepared data, labels, the training run). An interrupted run (Ctrl-C,
SIGTERM, a crash) is continued with the same command plus ``--resume``: prepared brackets are kept and training
resumes from its last complete epoch. The folder is removed after success unless ``--keep_work``.

The logic lives in ``photo/adapt.py``; this file is the command line and the calls of ``train.py``/``test.py``.

Exit codes: 0 done (skipped brackets are listed), 2 a user error whose message names the file or folder (nothing
usable in DIR, a checkpoint that does not fit the network, a leftover ``<out>.partial`` without ``--resume``, ...),
1 a training failure, 130 interrupted. ``main(argv) -> int`` is importable.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from photo.adapt import (EXIT_INTERRUPTED, EXIT_USAGE, RUN_NAME, STAGE0_NAME, AdaptError, Work,  # noqa: E402,F401
                         decide, epoch_plan, hold_out, open_work, prepare, summary_table, write_checkpoint,
                         write_comparisons, write_state)
from photo.batch import find_brackets  # noqa: E402
from photo.errors import MergeError  # noqa: E402
from photo.merge import load_network  # noqa: E402
from photo.response_choice import response_flag  # noqa: E402
from util.flags import NumberRangeError, check_number_flags, checked_number  # noqa: E402
from util.malloc import tune_malloc  # noqa: E402
from util.tiling import tile_flag  # noqa: E402
from util.tonemap import OPERATORS  # noqa: E402
from util.visualizer import setup_logging  # noqa: E402

logger = logging.getLogger('adapt')
COMPILE_MIN_ITERS = 1000  # --compile auto: fine-tunings at least this long compile (bench/results/demo_compile.json)


def device_flags(args) -> list[str]:
    """Device and precision of every train.py/test.py run (--amp auto: bf16 where the hardware has it)."""
    return ['--gpu_ids', '0' if args.device == 'cuda' else '-1', '-j', '0', '--verbose', 'False', '--amp', args.amp]


def compile_flag(args) -> str:
    """train.py's --compile: auto (train.py then compiles unless the networks run in channels_last on an AMX CPU,
    where eager is as fast) when the fine-tuning is long enough to repay torch.compile's warm-up, else False;
    an explicit True/False as given."""
    if args.compile == 'auto':
        return 'auto' if args.iters >= COMPILE_MIN_ITERS else 'False'
    return args.compile


def structure_labels(args, work: Work, structure_ckpt: str) -> None:
    """Step 3: the structure network on the aligned frames (test.py --stage0_inference) -> ``work.stru``."""
    import test

    argv = ['--dataroot', str(work.data), '--dataset_name', 'sig17align', '--model', 'selfhdr2',
            '--network', args.network, '--checkpoints_dir', str(work.ckpt), '--name', STAGE0_NAME,
            '--load_path', structure_ckpt, '--stage0_inference', 'True', '--save_imgs', 'False',
            '--medium_gate', 'off',  # the structure component is the backbone's own output, not the gate's blend
            '--results_csv', 'False', '--tile', str(args.tile), '--tile_overlap', str(args.tile_overlap),
            '--max_memory', str(args.max_memory)]
    status = test.main(argv + device_flags(args))
    setup_logging(str(work.root / 'adapt.log'))
    if status != 0:
        raise RuntimeError(f'stage-0 inference failed (exit status {status}); see {work.ckpt / STAGE0_NAME}/test.log')


# ------------------------------------------------------------------------------------------------------ training
def train_argv(args, work: Work, epochs: int, per_epoch: int, resume: bool) -> list[str]:
    argv = ['--dataroot', str(work.data), '--dataset_name', 'sig17align', '--model', 'selfhdr2',
            '--network', args.network, '--checkpoints_dir', str(work.ckpt), '--name', RUN_NAME,
            '--stru_lable_path', str(work.stru), '--batch_size', str(args.batch_size),
            '--patch_size', str(args.patch_size), '--niter', str(epochs), '--iters_per_epoch', str(per_epoch),
            '--lr', str(args.lr), '--lr_policy', args.lr_policy, '--vgg_weights', args.vgg_weights,
            '--calc_metrics', 'False', '--print_freq', str(max(1, min(per_epoch, 25))), '--seed', str(args.seed),
            '--save_epoch_freq', '1', '--compile', compile_flag(args),
            # where the medium frame clips, the label is the short frame alone, the bracket's noisiest: fitting it
            # fooled the decision (validation domain: +2.2 dB on the trusted pixels, -0.18 dB against the truth)
            '--colour_skip_clipped', 'True'] + device_flags(args)
    if args.vgg_path:
        argv += ['--vgg_path', args.vgg_path]
    # --continue_train picks the newest complete epoch; --load_path would restart from the input checkpoint.
    return argv + (['--continue_train', 'True'] if resume else ['--load_path', str(args.checkpoint)])


def fine_tune(args, work: Work) -> Path:
    """Step 4 (train.py in this process); returns the final epoch's checkpoint."""
    import train
    from models.base_model import saved_model_epochs

    epochs, per_epoch = epoch_plan(args.iters, args.save_every)
    done = saved_model_epochs(str(work.run))
    if done and done[-1] >= epochs:
        logger.info('fine-tuning already finished (epoch %d of %d)', done[-1], epochs)
        return work.run / f'SelfHDR_model_{epochs}.pth'
    if epochs * per_epoch != args.iters:
        logger.info('--iters %d is run as %d epochs of %d iterations (%d in all)', args.iters, epochs, per_epoch,
                    epochs * per_epoch)
    logger.info('fine-tuning %s: %d iterations of batch %d x %dx%d crops, lr %g (%s), --amp %s, %s%s', args.network,
                epochs * per_epoch, args.batch_size, args.patch_size, args.patch_size, args.lr, args.lr_policy,
                args.amp, {'True': 'compiled', 'False': 'not compiled'}.get(compile_flag(args),
                                                                          '--compile auto (train.py logs its choice)'),
                f'; resuming after epoch {done[-1]}' if done else '')
    status = train.main(train_argv(args, work, epochs, per_epoch, resume=bool(done)))
    setup_logging(str(work.root / 'adapt.log'))
    if status == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    if status != 0:
        raise RuntimeError(f'fine-tuning failed (exit status {status}); see {work.run / "train.log"}')
    return work.run / f'SelfHDR_model_{epochs}.pth'




# ------------------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    from models.networks import NETWORKS

    p = argparse.ArgumentParser(description='Fine-tune a stage-2 SelfHDR network on your own unlabeled brackets '
                                            '(self-supervised: colour and structure components from the brackets).')
    p.add_argument('--brackets', type=str, required=True,
                   help='folder with one sub-folder per bracket (as merge_brackets --input_dir takes)')
    p.add_argument('--checkpoint', type=str, required=True, help="stage-2 checkpoint {'state_dict': ...} to adapt")
    p.add_argument('--network', type=str, required=True, choices=list(NETWORKS), help='backbone of the checkpoint')
    p.add_argument('--stage1', type=str, default=None,
                   help='stage-1 checkpoint that gives the structure component (default: the stage-2 checkpoint '
                        'itself serves as the structure network)')
    p.add_argument('--iters', type=int, default=600,
                   help='fine-tuning iterations (600 since round 3, fourteenth session: chosen on validation draws)')
    p.add_argument('--denoise_labels', type=str, default='on', choices=('on', 'off'),
                   help="denoise the colour label Y_color (non-local means in the tone-mapped domain, strength from "
                        "its own noise level per brightness band, texture-robust; util/label_denoise.py). It is "
                        "merged from the inputs themselves, so without this the network learns to keep their noise")
    p.add_argument('--decide', type=str, default='on', choices=('on', 'off'),
                   help="on: hold a quarter of the brackets out of fine-tuning, score the original network and every "
                        "epoch on their trusted pixels (static, well exposed) against their colour labels, and write "
                        "the best epoch only if it beats the original by 0.05 dB, else the original (the decision is "
                        "printed and saved as <out>_decision.json); off: always the last epoch, all brackets trained")
    p.add_argument('--out', type=str, required=True, help='the adapted checkpoint (release format)')
    p.add_argument('--resume', action='store_true', help='continue the interrupted run kept in <out>.partial/')
    p.add_argument('--keep_work', action='store_true', help='keep <out>.partial/ (data, labels, logs) after success')
    p.add_argument('--compare_dir', type=str, default=None,
                   help='folder of the before/after sheets (default: <out without extension>_compare)')
    p.add_argument('--batch_size', type=int, default=4, help='training batch size')
    p.add_argument('--patch_size', type=int, default=64, help='training crop size (random crops)')
    p.add_argument('--lr', type=float, default=1e-4,
                   help="learning rate (Adam, fresh state; the release's stage-2 rate). The first steps perturb the "
                        'network before it improves: very short runs (tens of iterations) can end worse than they '
                        'began')
    p.add_argument('--lr_policy', type=str, default='cosine', choices=('cosine', 'step', 'linear'),
                   help="learning-rate schedule over the epochs ('cosine' decays to 1e-5)")
    p.add_argument('--save_every', type=int, default=50, help='iterations between checkpoints (one epoch)')
    p.add_argument('--seed', type=int, default=0, help='random seed of the crops and the training noise')
    p.add_argument('--max_side', type=int, default=0,
                   help='downscale the training frames so that their longer side is at most this (0: full size; '
                        'the training set is held in memory, 1500 suits 20-megapixel photos)')
    p.add_argument('--vgg_weights', type=str, default='auto', choices=('imagenet', 'auto', 'random'),
                   help="VGG19 of the structure loss: 'auto' uses cached ImageNet weights or falls back to random "
                        "weights with a warning (offline); 'imagenet' requires them")
    p.add_argument('--vgg_path', type=str, default='', help='file with torchvision VGG19 ImageNet weights')
    p.add_argument('--response', type=str, default=None,
                   help='camera response, as merge_brackets: auto (default: estimated for 8-bit brackets, with a '
                        'reliability check falling back to sRGB; 16-bit gamma 2.2), gamma<value>, srgb, estimate, or a '
                        'saved .npy/.csv table')
    p.add_argument('--gamma', type=float, default=None, help='shorthand for --response gamma<value>')
    p.add_argument('--trust_exposures', action='store_true',
                   help="use the exposure times even when the frames' brightness contradicts them")
    p.add_argument('--no_prealign', action='store_true', help='skip the global pre-alignment (tripod brackets)')
    p.add_argument('--tonemap', type=str, default='display', choices=sorted(OPERATORS),
                   help='tone map of the comparison sheets')
    p.add_argument('--device', type=str, default='cpu', choices=['cpu', 'cuda'], help='where the networks run')
    p.add_argument('--amp', type=str, default='auto', choices=('none', 'bf16', 'fp16', 'auto'),
                   help="precision of the networks: auto = bf16 where the hardware has it (a CPU with avx512_bf16/"
                        "AMX, CUDA with bf16), fp32 elsewhere; none = fp32 (README, 'Speed')")
    p.add_argument('--compile', type=str, default='auto', choices=('auto', 'True', 'False'),
                   help=f'torch.compile the network for the fine-tuning; auto: when --iters >= {COMPILE_MIN_ITERS}, '
                        'where the compile warm-up is repaid (bench/demo_compile.py)')
    p.add_argument('--tile', type=tile_flag, default='auto',
                   help='tile side of the inference passes (0: whole image); auto: the whole image when it fits '
                        '--max_memory (on a CPU: up to 768x768 pixels), else the largest tiles that do')
    p.add_argument('--max_memory', type=float, default=0,
                   help='GB the inference passes may use, for --tile auto (0: 80%% of the memory available)')
    p.add_argument('--tile_overlap', type=int, default=32, help='overlap of neighbouring tiles in pixels')
    p.add_argument('--malloc', type=str, default='tuned', choices=['tuned', 'system'],
                   help="glibc malloc setting (util/malloc.py)")
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bars')
    return p


# The numeric flags and their documented ranges (util.flags.check_number_flags): a value that is not finite or out
# of range stops the run before any bracket is read, naming the flag.
NUMBER_FLAGS = {'iters': (1, 10 ** 7, True), 'save_every': (1, 10 ** 7, True), 'batch_size': (1, 4096, True),
                'patch_size': (8, 1 << 14, True), 'lr': (0.0, 1.0, False, True), 'seed': (0, 2 ** 32 - 1, True),
                'max_side': (0, 1 << 16, True), 'gamma': (0.1, 10.0, False), 'max_memory': (0.0, float(1 << 20), False),
                'tile_overlap': (0, 1 << 16, True)}


def _check_args(args) -> None:
    try:
        check_number_flags(args, NUMBER_FLAGS)
        if args.tile != 'auto':
            checked_number(args.tile, '--tile', 0, 1 << 16, integer=True)
    except NumberRangeError as exc:
        raise AdaptError(str(exc)) from None
    from models.backbones import backbone

    multiple = backbone(args.network).crop_multiple
    if args.patch_size % multiple:
        raise AdaptError(f'--patch_size {args.patch_size}: {args.network} needs a multiple of {multiple}')
    out = Path(args.out)
    if out.suffix.lower() != '.pth' or out.is_dir():
        raise AdaptError(f'--out {out}: expected a .pth file name')
    for flag in ('checkpoint', 'stage1'):  # the adapted model would overwrite the one it starts from
        given = getattr(args, flag, None)
        if given and Path(given).resolve() == out.resolve():
            raise AdaptError(f'--out {out} is the --{flag} file; the adapted model needs a file of its own')
    if args.amp == 'fp16' and args.device != 'cuda':
        raise AdaptError('--amp fp16 is CUDA-only (the CPU has no fast fp16 kernels); use --amp bf16 or auto')
    if args.device == 'cuda':
        import torch

        if not torch.cuda.is_available():
            raise AdaptError('--device cuda: CUDA is not available on this machine; use --device cpu')


def run(args) -> int:
    from models.base_model import CheckpointError

    out = Path(args.out)
    compare_dir = Path(args.compare_dir) if args.compare_dir else out.with_name(out.stem + '_compare')
    try:
        _check_args(args)
        response_flag(args)
        jobs = find_brackets(args.brackets, flag='--brackets')  # MergeError names DIR when nothing usable is in it
        net = load_network(args.network, args.checkpoint, args.device)  # CheckpointError names the file
        structure_ckpt = args.stage1 or args.checkpoint
        if args.stage1:
            load_network(args.network, args.stage1, 'cpu')
        work, state = open_work(args, out)
    except (AdaptError, MergeError, CheckpointError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    setup_logging(str(work.root / 'adapt.log'))
    if args.stage1:
        logger.info('structure component: the stage-1 network %s', args.stage1)
    else:
        logger.info('structure component: no --stage1 given, so the stage-2 checkpoint %s itself serves as the '
                    'structure network (the method uses the stage-1 network; pass --stage1 if you have it)',
                    args.checkpoint)
    progress = not args.quiet
    start = time.time()
    try:
        if not state['prepared']:
            prepare(jobs, args, net, work, state, progress)
            if not any(b['ok'] for b in state['brackets'].values()):
                print(summary_table(state))
                shutil.rmtree(work.root, ignore_errors=True)  # nothing worth resuming
                raise AdaptError(f'--brackets {args.brackets}: no bracket could be used (see the table above)')
            if args.decide == 'on':
                hold_out(work, state)
            structure_labels(args, work, structure_ckpt)
            state['prepared'] = True
            write_state(work, state)
        final = fine_tune(args, work)
        if args.decide == 'on':
            final, decision = decide(args, work, state, epoch_plan(args.iters, args.save_every)[0])
            state['decision'] = decision
            write_state(work, state)
            logger.info('decision: kept the %s: %s', decision['kept'], decision['why'])
        write_checkpoint(final, out, gate_from=args.checkpoint)
        sheets = write_comparisons(jobs, args, state, work, out, compare_dir, progress)
    except KeyboardInterrupt:
        logger.error('interrupted; the work so far is kept in %s: run the same command with --resume to continue',
                     work.root)
        return EXIT_INTERRUPTED
    except (AdaptError, MergeError, CheckpointError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, OSError) as exc:
        logger.error('%s; the work so far is kept in %s (--resume continues it)', exc, work.root)
        return 1
    print(summary_table(state))
    skipped = [(n, b) for n, b in state['brackets'].items() if not b['ok']]
    for name, b in skipped:
        print(f'skipped: {b["folder"]}: {b["message"]}', file=sys.stderr)
    if 'decision' in state:
        d = state['decision']
        print(f'decision: kept the {d["kept"]} ({d["why"]}; scored on the trusted pixels of the {d["scored_on"]} '
              f'brackets {", ".join(d["brackets"])})')
        decision_file = out.with_name(out.stem + '_decision.json')
        decision_file.write_text(json.dumps(d, indent=1))
    print(f'wrote {out} ({time.time() - start:.0f} s) and {len(sheets)} comparison sheets in {compare_dir}')
    if not args.keep_work:
        shutil.rmtree(work.root, ignore_errors=True)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad flags, 0 on --help; return it instead
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    tune_malloc(args.malloc)
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
