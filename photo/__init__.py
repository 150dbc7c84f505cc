"""The bracket pipeline: a user's own exposure bracket -> HDR radiance with a trained SelfHDR backbone.

=================  ==================================================================================================
``frames``         read a bracket (8/16-bit JPEG/PNG/TIFF, camera RAW), order it, pick short/medium/long
``exposures``      EXIF exposure times, ``--exposures`` values, the check that times and brightness agree
``raw``            camera RAW through rawpy/LibRaw: linear, as-shot white balance, exposure metadata
``response``       camera response curves: tables, files, applying one, estimating one from a bracket
``response_choice`` which curve a bracket gets (flags, RAW's identity, the estimate) and why
``prealign``       one homography per frame onto the reference (handheld brackets)
``merge``          the network's inputs and forward, ``merge()`` (the whole pipeline), the classical merge
``outputs``        .hdr/.exr/.tif/.png writers, the preview, the comparison sheet, ``write_outputs()``
``batch``          one bracket per sub-folder: run, skip failures, summary table
``contact_sheet``  a batch's ``index.html``: preview, classical merge, inputs, log line per bracket
``adapt``          self-supervised adaptation to the user's brackets (work folder, preparation, held-out
                   brackets and the keep-or-not decision, outputs)
=================  ==================================================================================================

``tools/merge_brackets.py`` and ``tools/adapt.py`` are the command lines over it. Layer: ``photo`` may import
``util``, ``models`` and ``data``; nothing in those imports ``photo`` (tests/test_layers.py).
"""
