"""Evaluate (or run) trained models, as the release's test.py, on CPU or GPU.

    python test.py --dataroot D --dataset_name sig17align --model selfhdr2 --network AHDRNet \
        --checkpoints_dir ./pretrained_models --name ahdrnet_stage2 --load_iter 1 --save_imgs True

Writes `<ckpt>/<name>/output_<epoch>/<scene>.hdr`, mu-law PNGs in `output_vis_<epoch>/` (with --save_imgs),
appends the averages to `log_epoch_<epoch>.txt`, and (ours) a per-scene CSV and a summary JSON.
`--stage0_inference True` runs a stage-1 model on `Training_align` to write the structure labels.
"""
import csv
import json
import logging
import os
import sys
import time

import cv2
import numpy as np
import torch
from tqdm import tqdm

import data
import models
from data.base_dataset import DatasetError
from models.base_model import CheckpointError
from options.test_options import TestOptions
from util import metrics
from util.fs import OutputWriteError, write_failure_cause
from util.hdr_io import ImageReadError, ImageWriteError, write_hdr
from util.malloc import tune_malloc
from util.tiling import MemoryBudgetError, is_out_of_memory
from util.tonemap import mu_law
from util.visualizer import setup_logging

logger = logging.getLogger('test')

BASE_METRICS = ('psnr_l', 'psnr_mu', 'ssim_l', 'ssim_mu')


def metric_functions(extra):
    functions = {'psnr_l': metrics.psnr_l, 'psnr_mu': metrics.psnr_mu,
                 'ssim_l': metrics.ssim_l, 'ssim_mu': metrics.ssim_mu}
    if 'pu21' in extra:
        functions.update(pu21_psnr=metrics.pu21_psnr, pu21_ssim=metrics.pu21_ssim)
    if 'cvvdp' in extra:
        functions['cvvdp'] = metrics.cvvdp_score
    if 'lpips' in extra:
        functions['lpips'] = metrics.lpips_score
    return functions


def write_png(path, image):
    tmp = path + '.tmp.png'
    if not cv2.imwrite(tmp, np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)):
        raise OSError(f'cannot write {path}')
    os.replace(tmp, path)


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class EvaluationError(ValueError):
    """An output or a metric that is not a number; the message names the scene."""


def evaluate(model, opt, dataset_name, epoch):
    """Run one checkpoint over one data set's test split; returns the summary dict."""
    dataset = data.create_dataset(dataset_name, 'test', opt)
    loader = data.create_dataloader(dataset, opt, 'test')
    save_root = os.path.join(opt.checkpoints_dir, opt.name)
    out_dir = os.path.join(save_root, f'output_{epoch}')
    vis_dir = os.path.join(save_root, f'output_vis_{epoch}')
    save_hdr = opt.save_imgs or opt.stage0_inference
    if save_hdr:
        os.makedirs(out_dir, exist_ok=True)
    if opt.save_imgs:
        os.makedirs(vis_dir, exist_ok=True)
    with_metrics = opt.calc_metrics and dataset.has_label
    functions = metric_functions(opt.extra_metrics) if with_metrics else {}
    rows, times = [], []
    for index, batch in enumerate(tqdm(loader, desc=f'{dataset_name} epoch {epoch}')):
        if index >= opt.max_test_images:
            break
        model.set_input(batch)
        synchronize(model.device)
        start = time.time()
        model.test()
        synchronize(model.device)
        times.append(time.time() - start)
        out = model.data_out[0].float().cpu().permute(1, 2, 0).numpy()  # (H, W, 3) BGR
        name = batch['fname'][0]
        bad = int((~np.isfinite(out)).sum())
        if bad:
            raise EvaluationError(f'{dataset_name} scene {name}: the network output holds {bad} NaN/Inf values '
                                  f'(checkpoint epoch {epoch}); no metrics are written for it')
        row = {'scene': name, 'seconds': times[-1]}
        if with_metrics:
            label = model.label[0].float().cpu().permute(1, 2, 0).numpy()
            for metric, fn in functions.items():
                try:
                    row[metric] = fn(out, label)
                except ValueError as exc:
                    raise EvaluationError(f'{dataset_name} scene {name}: {metric} cannot be computed: {exc}') from exc
        rows.append(row)
        if save_hdr:
            write_hdr(os.path.join(out_dir, f'{name}.hdr'), out)
        if opt.save_imgs:
            write_png(os.path.join(vis_dir, f'{name}.png'), mu_law(np.clip(out, 0, 1)))
    summary = {'dataset': dataset_name, 'epoch': epoch, 'network': opt.network, 'scenes': len(rows),
               'seconds_per_image': float(np.mean(times)) if times else float('nan')}
    for metric in functions:
        summary[metric] = float(np.mean([row[metric] for row in rows]))
    write_reports(opt, save_root, epoch, dataset_name, rows, summary)
    return summary


def write_reports(opt, save_root, epoch, dataset_name, rows, summary):
    os.makedirs(save_root, exist_ok=True)
    line = f'{dataset_name}: ' + ', '.join(
        f'{k}: {v:.4f}' if isinstance(v, float) else f'{k}: {v}' for k, v in summary.items() if k != 'dataset')
    with open(os.path.join(save_root, f'log_epoch_{epoch}.txt'), 'a') as handle:
        handle.write(line + '\n')
    logger.info(line)
    if not opt.results_csv:
        return
    stem = os.path.join(save_root, f'metrics_{dataset_name}_epoch_{epoch}')
    fields = list(rows[0]) if rows else ['scene']
    tmp = stem + '.csv.tmp'
    with open(tmp, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, stem + '.csv')
    tmp = stem + '.json.tmp'
    with open(tmp, 'w') as handle:
        json.dump(summary, handle, indent=2)
    os.replace(tmp, stem + '.json')


def print_table(summaries):
    keys = [k for k in ('psnr_mu', 'psnr_l', 'ssim_mu', 'ssim_l', 'pu21_psnr', 'pu21_ssim', 'cvvdp', 'lpips',
                        'seconds_per_image') if any(k in s for s in summaries)]
    header = f"{'dataset':<14}{'epoch':>6}{'scenes':>8}" + ''.join(f'{k:>19}' for k in keys)
    print(header)
    for s in summaries:
        print(f"{s['dataset']:<14}{s['epoch']:>6}{s['scenes']:>8}" +
              ''.join(f'{s[k]:>19.4f}' if k in s else f"{'-':>19}" for k in keys))


def main(argv=None):
    options = TestOptions()
    opt = options.parse(argv)
    tune_malloc(opt.malloc)
    opt.rank, opt.distributed = 0, False
    # more loader workers than cores only adds start-up time and memory (the release's default is 8)
    opt.num_dataloader = min(opt.num_dataloader, os.cpu_count() or 1)
    try:
        options.save(opt, 'test')
        setup_logging(os.path.join(opt.checkpoints_dir, opt.name, 'test.log'))
    except OSError as exc:
        target = exc.filename or os.path.join(opt.checkpoints_dir, opt.name)
        print(f'error: cannot write to {target}: {write_failure_cause(exc, target)}', file=sys.stderr)
        return 1
    unavailable = [why for why in map(metrics.metric_unavailable, opt.extra_metrics if opt.calc_metrics else ())
                   if why]
    if unavailable:
        logger.error('%s', '; '.join(unavailable))
        return 2
    if not opt.load_path and not any(e > 0 for e in opt.load_iter):
        logger.error('no checkpoint: give --load_iter N (loads SelfHDR_model_N.pth from %s) or --load_path FILE',
                     os.path.join(opt.checkpoints_dir, opt.name))
        return 2
    model = models.create_model(opt)
    summaries = []
    try:
        model.setup(opt)
        model.eval()
        for i, epoch in enumerate(opt.load_iter):
            if i > 0 and (epoch > 0 or opt.load_path):  # setup() loaded the first one
                model.load_networks(epoch)
            for dataset_name in opt.dataset_name:
                summaries.append(evaluate(model, opt, dataset_name, epoch))
    except (CheckpointError, EvaluationError, OutputWriteError, ImageWriteError) as exc:
        # a missing or mismatched checkpoint, a broken output, a full disk: a clear message and a failing status
        logger.error('%s', exc)
        return 1
    except (DatasetError, ImageReadError) as exc:  # the user's data: the message names the file or folder
        logger.error('%s', exc)
        return 2
    except MemoryBudgetError as exc:  # --tile auto found no tile that fits: the message says what to change
        logger.error('%s', exc)
        return 1
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        logger.error('out of memory running %s (tile %s): use --tile auto (tiles chosen to fit the memory), or a '
                     'smaller --tile, or lower --max_memory if other programs need the memory (%s)',
                     opt.network, opt.tile, str(exc).splitlines()[0][:200])
        return 1
    except OSError as exc:  # reports and logs written with open(): a full disk or a read-only folder
        target = exc.filename or os.path.join(opt.checkpoints_dir, opt.name)
        logger.error('cannot write %s: %s', target, write_failure_cause(exc, target))
        return 1
    print_table(summaries)
    broken = [f"{s['dataset']} epoch {s['epoch']}: {k}" for s in summaries for k in BASE_METRICS
              if k in s and np.isnan(s[k])]
    if broken:
        logger.error('non-finite metrics (%s): the outputs hold NaN/Inf', ', '.join(broken))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
