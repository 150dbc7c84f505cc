"""Merge a user's own exposure brackets into HDR images with a trained SelfHDR backbone.

    python tools/merge_brackets.py --inputs a.jpg b.jpg c.jpg --network AHDRNet \
        --checkpoint pretrained_models/ahdrnet_stage2/SelfHDR_model_1.pth [--output_dir D] [--name N]

Inputs: three or more frames of one scene (``--inputs``), or ``--input_dir`` with one sub-folder per bracket
(a batch: a progress bar, a failing bracket is reported and skipped, a summary table at the end and a contact
sheet ``index.html`` in ``--output_dir`` (preview, classical merge, inputs and log line of each bracket), exit code
2 if any failed). Frames are 8- or 16-bit JPEG, PNG or TIFF, read as BGR in [0, 1]
(``util.hdr_io.read_ldr``), or camera RAW files (DNG, CR2, NEF, ARW, ...; ``photo.raw``: LibRaw demosaicing,
as-shot white balance, linear 16-bit, exposure time from the RAW metadata; no response curve is applied). Outputs in ``--output_dir`` (default: the current folder), chosen with ``--formats``: ``<name>.hdr`` and
``<name>.exr`` (linear radiance, the short exposure's scale, values in (0, 1); ``--exr_type half|float``),
``<name>.tif`` (16-bit linear), and a tone-mapped 8-bit preview ``<name>.png`` (whose static shadows take the
classical merge's colour where it agrees with the network; ``--preview_shadows network`` keeps the network's own);
``--compare`` adds ``<name>_compare.png`` (inputs, classical merge and network side by side, labelled). All are written to a
temporary name and renamed. ``<name>`` defaults to the medium frame's file name + ``_hdr``.

Behaviour, and the choices made here:

* **Exposure times** come from EXIF ``ExposureTime`` (Exif sub-IFD, or IFD0 as some TIFF writers
  store it) unless ``--exposures`` is given, in seconds (``1/100`` or ``0.01``) or, with
  ``--exposures_in stops``, in stops (``t = 2 ** value``). They are divided by the shortest, so the
  short frame has ``t = 1``: the networks were trained on that radiance scale (Kalantari's data).
* **Order.** Frames are sorted by exposure time (short, medium, long; the medium is the reference
  whose geometry the output keeps). Of more than three, the shortest, the longest and the one nearest their
  middle in stops (or ``--reference``) are used; the tool says which. When the given order differs, a warning lists the order used.
  ``--strict_order`` refuses instead (exit code 2), for scripts that must not be second-guessed.
* **Camera response** ``--response`` (``photo.response``): ``auto`` (default; ``photo.response_choice``: 8-bit
  frames get the curve estimated from the bracket when it passes a reliability check, else sRGB, and the log says
  which and why; 16-bit frames gamma 2.2), ``gamma<g>``, ``srgb``, ``estimate`` (recovered from the bracket itself) or a saved ``.npy``/``.csv`` table (``--save_response``
  writes the one used, to reuse for the same camera). Each frame is linearised with it and **re-encoded with
  the training gamma**, ``X' = f(X) ** (1/2.2)``, so the network gets ``cat([X' ** 2.2 / (t + 1e-8), X'])``:
  the kind of input it was trained on, with the camera's own linear radiance. For ``gamma2.2`` the frames
  pass through unchanged. ``--gamma g`` is kept as a shorthand for ``--response gamma<g>``.
* **Pre-alignment** (default; ``--no_prealign`` skips it): a global homography per frame onto the medium one
  (``photo.prealign``: ORB/SIFT features on exposure-equalised grey images, RANSAC, ECC refinement), for handheld
  brackets. The output keeps the medium frame's geometry; a frame that cannot be aligned is a warning and keeps
  its own geometry; shifts under half a pixel leave the frame untouched.
* **Alignment** (``--align``) warps short and long onto the medium frame with ``util.align``
  before the network. ``auto`` (default) aligns for FSHDR, which was trained and tested on aligned frames (a
  warning says so when ``--align off`` is given); AHDRNet, HDR-Transformer and SCTNet deghost by themselves.
* Transformer backbones get the release's test-time reflection padding (``util.tiling.padded_forward``);
  ``--tile auto`` (default) runs the whole image when it fits the memory (``--max_memory``, default most of what is
  available) and, on a CPU, has at most 768x768 pixels (larger images run faster in tiles), and otherwise
  overlapping tiles (``util.tiling.tiled_forward``) that fit; ``--tile N`` forces
  tiles of N pixels, ``--tile 0`` the whole image. ``--amp auto`` (default) runs the network in bf16 where the
  hardware has it (a CPU with avx512_bf16/AMX, CUDA with bf16); ``--amp none`` is fp32 throughout.
* **Preview** operator ``--tonemap``: ``display`` (default; MATLAB-like local operator, readable for any
  scene), ``reinhard``, or ``mu`` (the mu-law of the losses and of the release's PNGs).

Errors a user can cause (missing or unreadable file, sizes that differ, not three inputs, no exposure
times, equal exposures, a checkpoint that does not fit the network, ...) exit with code 2 and a message
naming the file. ``main(argv) -> int`` is importable; the pipeline itself is the package ``photo/``
(``photo.merge.merge``, ``photo.outputs.write_outputs``, ``photo.batch``), of which this file is the command line.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Allow `python tools/merge_brackets.py` from the repository root as well as `python -m tools.merge_brackets`.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from photo.batch import EXPOSURE_FILE, describe, find_brackets, run_batch, summary_table  # noqa: E402
from photo.contact_sheet import write_index  # noqa: E402
from photo.errors import MergeError  # noqa: E402
from photo.exposures import _exif_value_to_seconds, parse_exposures, read_exposure_time  # noqa: E402,F401
from photo.frames import BracketFrames, load_bracket  # noqa: E402,F401
from photo.merge import MergeResult, load_network, merge  # noqa: E402,F401
from photo.outputs import (DEFAULT_FORMATS, FORMAT_SUFFIX, OUTPUT_FORMATS, PREVIEW_SHADOWS,  # noqa: E402
                           ensure_output_folder, write_outputs)
from photo.response_choice import response_flag  # noqa: E402
from util.flags import NumberRangeError, check_number_flags, checked_number  # noqa: E402
from util.malloc import tune_malloc  # noqa: E402
from util.tiling import tile_flag  # noqa: E402
from util.tonemap import OPERATORS  # noqa: E402

logger = logging.getLogger(__name__)

# The library names older scripts imported from here (they live in photo/ now).
__all__ = ['MergeError', 'BracketFrames', 'MergeResult', 'read_exposure_time', 'parse_exposures',
           'load_bracket', 'merge', 'write_outputs', 'build_parser', 'main']

EXIT_USAGE = 2
_load_network = load_network
_response_flag = response_flag


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from models.networks import NETWORKS

    p = argparse.ArgumentParser(description='Merge an exposure bracket (JPEG/PNG/TIFF or camera RAW), or a folder of '
                                            'brackets, into HDR with a trained SelfHDR backbone.')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--inputs', type=str, nargs='+',
                     help='three or more frames of one scene (any order; they are sorted by exposure time; of more '
                          'than three, the shortest, the longest and the middle one are used)')
    src.add_argument('--input_dir', type=str,
                     help='a batch: one sub-folder per bracket; outputs are named after the sub-folders')
    p.add_argument('--reference', type=str, default=None,
                   help='the input to use as the medium (reference) frame of a bracket of more than three')
    p.add_argument('--network', type=str, required=True, choices=list(NETWORKS), help='backbone of the checkpoint')
    p.add_argument('--checkpoint', type=str, required=True,
                   help="release-format checkpoint {'state_dict': ...}, e.g. SelfHDR_model_1.pth")
    p.add_argument('--exposures', type=str, nargs='+', default=None,
                   help='exposure of each input, in --inputs order (default: EXIF ExposureTime)')
    p.add_argument('--exposures_in', type=str, default='seconds', choices=['seconds', 'stops'],
                   help='unit of --exposures: seconds (1/100 or 0.01) or stops (t = 2**value)')
    p.add_argument('--trust_exposures', action='store_true',
                   help="use the exposure times even when the frames' brightness contradicts them")
    p.add_argument('--strict_order', action='store_true',
                   help='refuse inputs not given short, medium, long instead of sorting them')
    p.add_argument('--response', type=str, default=None,
                   help="camera response used to linearise JPEG/PNG/TIFF frames: auto (default: 8-bit frames get the "
                        "curve estimated from the bracket, or sRGB when the estimate fails its reliability check; "
                        "16-bit frames gamma 2.2), gamma<value>, srgb, estimate (always the bracket's own), or a "
                        "256x3 .npy/.csv table saved with --save_response")
    p.add_argument('--save_response', type=str, default=None,
                   help='write the response used (e.g. the estimated one) to this .npy or .csv file, to reuse '
                        'with --response FILE for the same camera')
    p.add_argument('--gamma', type=float, default=None,
                   help='shorthand for --response gamma<value> (kept for old scripts)')
    p.add_argument('--no_prealign', action='store_true',
                   help='skip the global pre-alignment (one homography per frame onto the medium one, for '
                        'handheld brackets); tripod brackets need none')
    p.add_argument('--align', nargs='?', const='on', default='auto', choices=('auto', 'on', 'off'),
                   help='align short and long frames to the medium one first (util.align); auto (default): for the '
                        'networks trained on aligned frames (FSHDR); a bare --align is on')
    p.add_argument('--output_dir', type=str, default='.', help='folder for the outputs (created if needed)')
    p.add_argument('--name', type=str, default=None,
                   help='output file name without extension (default: <medium frame name>_hdr)')
    p.add_argument('--tonemap', type=str, default='display', choices=sorted(OPERATORS),
                   help='operator of the PNG preview: display (MATLAB-like), reinhard, or mu (mu-law)')
    p.add_argument('--preview_exposure', type=float, default=0.0, help='exposure of the preview, in stops')
    p.add_argument('--preview_shadows', type=str, default='merge', choices=list(PREVIEW_SHADOWS),
                   help="colour of the display preview's static shadows: merge (the classical merge's, where it "
                        "agrees with the network; default) or network (the network's output alone)")
    p.add_argument('--formats', type=str, nargs='+', default=list(DEFAULT_FORMATS), choices=list(OUTPUT_FORMATS),
                   help='files to write: hdr (Radiance RGBE), exr (OpenEXR), tiff (16-bit linear), png (preview)')
    p.add_argument('--exr_type', type=str, default='float', choices=['half', 'float'],
                   help='pixel type of the .exr (half: half the size, 11-bit mantissa)')
    p.add_argument('--compare', action='store_true',
                   help='also write <name>_compare.png: the inputs, the classical merge and the network side by side')
    p.add_argument('--device', type=str, default='cpu', choices=['cpu', 'cuda'], help='where the network runs')
    p.add_argument('--amp', default='auto', choices=('none', 'bf16', 'fp16', 'auto'),
                   help='mixed precision of the network forward: auto = bf16 where the hardware has it (CUDA, or a '
                        'CPU with avx512_bf16/AMX), fp32 elsewhere; none = fp32 throughout; fp16 only on CUDA')
    p.add_argument('--channels_last', default='auto', choices=('auto', 'true', 'false'),
                   help='memory layout of the network forward: auto = channels_last on a CPU with AMX (bf16 up to 2x '
                        'faster there, fp32 a few percent), the default layout elsewhere')
    p.add_argument('--medium_gate', default='auto', choices=('auto', 'on', 'off'),
                   help="the checkpoint's medium gate (models/medium_gate.py: the medium frame where it is clean and "
                        "not clipped): auto = when the checkpoint has one, off = the backbone alone")
    p.add_argument('--tile', type=tile_flag, default='auto',
                   help='tile side in pixels for bounded memory (0: whole image); auto: the whole image when it fits '
                        '--max_memory, else the largest tiles that do (the log says which)')
    p.add_argument('--max_memory', type=float, default=0,
                   help='GB this merge may use, for --tile auto (0: 80%% of the memory available at the start)')
    p.add_argument('--tile_overlap', type=int, default=32, help='overlap of neighbouring tiles in pixels')
    p.add_argument('--malloc', type=str, default='tuned', choices=['tuned', 'system'],
                   help="glibc malloc setting (util/malloc.py): 'tuned' halves CPU inference time here")
    p.add_argument('-q', '--quiet', action='store_true', help='only warnings and errors')
    return p


# The numeric flags and their documented ranges, checked at the door (util.flags.checked_number): a value that is
# not finite or out of range is an error naming the flag, not a failure deep inside the merge.
NUMBER_FLAGS = {'gamma': (0.1, 10.0, False), 'preview_exposure': (-32.0, 32.0, False),
                'max_memory': (0.0, float(1 << 20), False), 'tile_overlap': (0, 1 << 16, True)}


def check_numbers(args) -> None:
    """Raise NumberRangeError naming the first numeric flag outside its range."""
    check_number_flags(args, NUMBER_FLAGS)
    if args.tile != 'auto':
        checked_number(args.tile, '--tile', 0, 1 << 16, integer=True)


OUTPUT_SUFFIXES = (*FORMAT_SUFFIX.values(), '.tiff')  # a --name ending in one of these has it dropped


def main(argv=None) -> int:
    from models.base_model import CheckpointError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad flags, 0 on --help; return it instead
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        check_numbers(args)
    except NumberRangeError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format='%(levelname)s %(message)s')
    import cv2
    # errors only: libtiff's warnings about camera tags it does not know (ExposureTime, ...) are noise here
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    tune_malloc(args.malloc)
    if args.input_dir is not None:
        return _main_batch(args)
    try:
        ensure_output_folder(args.output_dir)
        result = merge(args.inputs, args.network, args.checkpoint, exposures=args.exposures,
                       exposures_in=args.exposures_in, response=response_flag(args), device=args.device,
                       tile=args.tile, save_response_to=args.save_response,
                       tile_overlap=args.tile_overlap, align=args.align, strict_order=args.strict_order,
                       trust_exposures=args.trust_exposures, prealign=not args.no_prealign,
                       reference=args.reference, amp=args.amp, max_memory=args.max_memory,
                       medium_gate=args.medium_gate, channels_last=args.channels_last)
        name = args.name if args.name is not None else f'{result.bracket.paths[1].stem}_hdr'
        if Path(name).suffix.lower() in OUTPUT_SUFFIXES:  # --name x.png meant x, not x.png.png
            logger.info('--name %s: its extension dropped (each format adds its own)', name)
            name = str(Path(name).with_suffix(''))
        paths = write_outputs(result, args.output_dir, name, args.tonemap, args.preview_exposure, args.formats,
                              args.exr_type, args.compare, args.preview_shadows)
    except (MergeError, CheckpointError, OSError) as exc:  # OSError: ImageReadError/ImageWriteError, disk
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    if not args.quiet:
        print(f'used {describe(result)}')
        print('wrote ' + ', '.join(str(p) for p in paths.values()))
    return 0


def _main_batch(args) -> int:
    from models.base_model import CheckpointError

    flags = [f for f, v in (('--name', args.name), ('--exposures', args.exposures), ('--reference', args.reference),
                            ('--save_response', args.save_response)) if v is not None]
    if args.strict_order:
        flags.append('--strict_order')
    try:
        if flags:
            raise MergeError(f'{", ".join(flags)}: not with --input_dir (each sub-folder is its own bracket'
                             + (f'; put its exposures in its {EXPOSURE_FILE}, one value in stops per frame)'
                                if args.exposures is not None else ')'))
        response_flag(args)
        jobs = find_brackets(args.input_dir)
        ensure_output_folder(args.output_dir)
        import torch

        if args.device.startswith('cuda') and not torch.cuda.is_available():
            raise MergeError(f'--device {args.device}: CUDA is not available on this machine; use --device cpu')
        net = load_network(args.network, args.checkpoint, args.device, args.medium_gate)
    except (MergeError, CheckpointError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    outcomes = run_batch(jobs, args, net, progress=not args.quiet)
    print(summary_table(outcomes))
    try:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        index = write_index(outcomes, args.output_dir)
        if not args.quiet:
            print(f'contact sheet: {index}')
    except OSError as exc:
        print(f'error: {args.output_dir}: the contact sheet could not be written ({exc})', file=sys.stderr)
        return EXIT_USAGE
    for o in outcomes:
        if not o.ok:
            print(f'error: {o.job.folder}: {o.message}', file=sys.stderr)
    return 0 if all(o.ok for o in outcomes) else EXIT_USAGE


if __name__ == '__main__':
    sys.exit(main())
