"""Two or more forms of one computation timed side by side in one process: the helper of bench/attention_path.py and
bench/layer_norm_path.py.

Each form is a function that switches the code to that form (e.g. sets a module's device list); every network is
warmed up once per form, then the forms alternate, the order swapped every run, so that the drift of a shared machine
falls on all of them. Inference under bf16 autocast, batch 1; each form's output is scored against the fp32 output.
"""
import statistics
import time

import torch

from models import networks
from speed import make_inputs, sync
from util.metrics import psnr


def bf16_forward(net, inputs, device, switch):
    """The float32 output of one bf16 forward after `switch()` selected the form (synchronised, for timing)."""
    switch()
    sync(device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        out = net(*inputs)
    sync(device)
    return out.float()


def alternate(forms, run, runs):
    """Times `run(form)` for each form: once each as a warm-up, then `runs` rounds with the order swapped every
    round (no order bias). Returns ({form: [seconds]}, {form: the last round's result})."""
    times = {form: [] for form in forms}
    results = {}
    for form in forms:
        run(form)  # warm-up: allocator, oneDNN primitives
    for round_ in range(runs):
        for form in (list(forms) if round_ % 2 == 0 else list(forms)[::-1]):
            start = time.perf_counter()
            results[form] = run(form)
            times[form].append(time.perf_counter() - start)
    return times, results


def measure_forms(name, device, size, runs, forms):
    """{form: {seconds_median, seconds_all, psnr_vs_fp32}} for backbone `name` at size x size; `forms` maps each
    form's name to its switch."""
    torch.manual_seed(0)
    net = networks.define_network(name).eval().to(device)
    inputs = make_inputs(1, size, size, device)
    with torch.inference_mode():
        reference = net(*inputs).float()
    times, outputs = alternate(forms, lambda form: bf16_forward(net, inputs, device, forms[form]), runs)
    ref = reference[0].cpu().numpy()
    return {form: {'seconds_median': statistics.median(times[form]), 'seconds_all': times[form],
                   'psnr_vs_fp32': psnr(outputs[form][0].cpu().numpy(), ref)} for form in forms}
