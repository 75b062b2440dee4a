"""Generate the official-graph fixture from the official TF DeepLab code.

The fixture (``tests/official/fixtures/``) is what our PyTorch DeepLabV3+ is
compared against: the variable manifest of each official inference graph and
its outputs for deterministic weights (``weights.official_value``) and images
(``weights.test_image``). The official code is never committed; this script
imports a local copy of it, with import patches applied at load time only.

Regenerate (from the repository root):

1. Copy these files of tensorflow/models (``research/`` tree; the commits read
   are listed in ``tests/official/README.md``) into a scratch folder outside the
   repository, keeping their paths::

       research/deeplab/model.py
       research/deeplab/core/{feature_extractor,xception,resnet_v1_beta,conv2d_ws,utils}.py
       research/slim/nets/mobilenet/{conv_blocks,mobilenet,mobilenet_v2}.py

   ``deeplab/core/nas_network.py``, ``deeplab/core/dense_prediction_cell.py``
   and ``nets/mobilenet/mobilenet_v3.py`` are imported by those files but never
   run for these networks; this script substitutes empty modules for them, so
   they need not be copied (copied ones are ignored).
2. A scratch venv with exactly ``tensorflow-cpu==2.21.0 tf-slim==1.1.0
   tf-keras==2.21.0`` (numpy comes with them). No torch: importing tensorflow
   before torchvision in one process segfaults.
3. ``VENV/bin/python tests/official/make_fixture.py --deeplab SCRATCH/research/deeplab
   --slim SCRATCH/research/slim --out tests/official/fixtures``

Import patches (text replacements on the official sources as they load):
``import tensorflow as tf`` -> ``tensorflow.compat.v1`` (with
``disable_v2_behavior()``), ``tf.contrib.slim`` / ``tensorflow.contrib.slim`` /
``contrib.framework`` / ``contrib.layers`` -> ``tf_slim``,
``contrib.slim.nets.resnet_utils`` -> ``tf_slim.nets.resnet_utils``; plus one
bug fix in ``predict_labels_multi_scale`` (see README). ``common.py``'s flags are
replaced by :class:`ModelOptions` with their defaults.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.abc
import importlib.util
import json
import linecache
import os
import re
import sys
import types
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf.keras must be tf-keras (Keras 2): the official conv2d_ws subclasses
# tf.keras.layers.Conv2D together with tf.layers.Layer.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from weights import official_value, test_image  # noqa: E402

NUM_CLASSES = 21
# "aligned": (side - 1) divisible by 4 x 16, so our evaluation canvas is the image itself at OS16
SIZES = {"odd": (49, 65), "even": (48, 64), "aligned": (65, 65)}
IMAGE_SEEDS = {"odd": 0, "even": 1, "aligned": 2}
MS_SCALES = [0.5, 0.75, 1.0, 1.25]

# (pattern, replacement) applied to every official source file on load.
SOURCE_PATCHES = [
    (r"^import tensorflow as tf$", "import tensorflow.compat.v1 as tf"),
    (r"^slim = tf\.contrib\.slim$", "import tf_slim as slim"),
    (r"^from tensorflow\.contrib import slim as contrib_slim$", "import tf_slim as contrib_slim"),
    (r"^from tensorflow\.contrib\.slim\.nets import resnet_utils$", "from tf_slim.nets import resnet_utils"),
    (r"^from tensorflow\.contrib import framework as contrib_framework$", "import tf_slim as contrib_framework"),
    (r"^from tensorflow\.contrib import layers as contrib_layers$", "import tf_slim as contrib_layers"),
    (r"^from tensorflow\.contrib\.layers\.python\.layers import (layers|utils)$", r"from tf_slim.layers import \1"),
    # tf-keras 2.21's Conv2D has the public convolution_op(inputs, kernel)
    # instead of TF 1.x's private _convolution_op (same convolution).
    (r"self\._convolution_op\(", "self.convolution_op("),
    # predict_labels_multi_scale assigns into a Tensor (TypeError in any TF);
    # the argmax before it is unaffected. Write into the result dict instead.
    (
        r"^(\s+)predictions\[output \+ PROB_SUFFIX\] = tf\.nn\.softmax\(predictions\)$",
        r"\1outputs_to_predictions[output + PROB_SUFFIX] = tf.nn.softmax(predictions)",
    ),
]

# Imported by the official files, never run for xception_65 / mobilenet_v2 /
# resnet_v1_101_beta: empty stand-ins, so they need not be copied.
STUB_MODULES = {
    "deeplab.core.nas_network": ("pnasnet", "hnasnet", "nas_arg_scope"),
    "deeplab.core.dense_prediction_cell": ("DensePredictionCell",),
    "nets.mobilenet.mobilenet_v3": (),
}


class OfficialSourceFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Loads ``deeplab.*`` and ``nets.*`` from the given folders, patched."""

    def __init__(self, roots: dict[str, Path]):
        self.roots = roots
        self.patch_counts: collections.Counter[str] = collections.Counter()
        self.sources: dict[str, str] = {}

    def _path(self, fullname: str) -> Path | None:
        top, *rest = fullname.split(".")
        if top not in self.roots:
            return None
        base = self.roots[top].joinpath(*rest)
        if base.is_dir():
            return base / "__init__.py"
        return base.with_suffix(".py")

    def find_spec(self, fullname, path=None, target=None):
        if fullname in STUB_MODULES:
            return None
        file = self._path(fullname)
        if file is None:
            return None
        is_package = file.name == "__init__.py"
        if not file.exists() and not is_package:
            raise ImportError(f"{fullname}: expected the official file {file}")
        spec = importlib.util.spec_from_loader(fullname, self, is_package=is_package)
        spec.origin = str(file)
        if is_package:
            spec.submodule_search_locations = [str(file.parent)]
        return spec

    def create_module(self, spec):
        return None

    def _patched_source(self, file: Path) -> str:
        source = file.read_text() if file.exists() else ""
        for pattern, replacement in SOURCE_PATCHES:
            source, n = re.subn(pattern, replacement, source, flags=re.MULTILINE)
            self.patch_counts[pattern] += n
        return source

    def get_source(self, fullname: str) -> str:
        return self.sources[fullname]

    def exec_module(self, module):
        file = Path(module.__spec__.origin)
        source = self.sources[module.__name__] = self._patched_source(file)
        # A name that is not a file on disk: linecache (and so autograph, which
        # re-reads function source) then asks get_source for the patched text.
        filename = f"{file} (patched)"
        module.__file__ = filename
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), module.__dict__)


def install_official_code(deeplab_dir: Path, slim_dir: Path):
    """Make ``deeplab.model`` importable from the local official copy."""
    import tensorflow.compat.v1 as tf

    tf.disable_v2_behavior()
    try:
        import tf_keras.legacy_tf_layers  # noqa: F401
    except ImportError:  # tf-keras 2.21 ships it under src only
        import tf_keras.src.legacy_tf_layers as legacy

        sys.modules["tf_keras.legacy_tf_layers"] = legacy
    for name, attributes in STUB_MODULES.items():
        stub = types.ModuleType(name)
        for attribute in attributes:
            setattr(stub, attribute, _not_built(name, attribute))
        sys.modules[name] = stub
    finder = OfficialSourceFinder({"deeplab": deeplab_dir, "nets": slim_dir / "nets"})
    sys.meta_path.insert(0, finder)
    model = importlib.import_module("deeplab.model")
    return tf, model, finder


def _not_built(module: str, attribute: str):
    def fail(*args, **kwargs):
        raise NotImplementedError(f"{module}.{attribute} is a stand-in; this fixture never builds it")

    return fail


# Field names and flag defaults of research/deeplab/common.py (commit in README).
_MODEL_OPTION_DEFAULTS = dict(
    preprocessed_images_dtype=None,  # tf.float32, set at build time
    merge_method="max",
    add_image_level_feature=True,
    image_pooling_crop_size=None,
    image_pooling_stride=[1, 1],
    aspp_with_batch_norm=True,
    aspp_with_separable_conv=True,
    multi_grid=None,
    decoder_output_stride=None,
    decoder_use_separable_conv=True,
    logits_kernel_size=1,
    model_variant="mobilenet_v2",
    depth_multiplier=1.0,
    divisible_by=None,
    prediction_with_upsampled_logits=True,
    dense_prediction_cell_config=None,
    nas_architecture_options={
        "nas_stem_output_num_conv_filters": 20,
        "nas_use_classification_head": False,
        "nas_remove_os32_stride": False,
    },
    use_bounded_activation=False,
    aspp_with_concat_projection=True,
    aspp_with_squeeze_and_excitation=False,
    aspp_convs_filters=256,
    decoder_use_sum_merge=False,
    decoder_filters=256,
    decoder_output_is_logits=False,
    image_se_uses_qsigmoid=False,
    label_weights=1.0,
    sync_batch_norm_method="None",
    batch_norm_decay=0.9997,
)
ModelOptions = collections.namedtuple(
    "ModelOptions",
    ["outputs_to_num_classes", "crop_size", "atrous_rates", "output_stride", *_MODEL_OPTION_DEFAULTS],
)

# The zoo's settings per network (model_zoo.md / local_test*.sh).
NETWORKS = {
    "xception65": dict(
        model_variant="xception_65",
        atrous_rates={16: [6, 12, 18], 8: [12, 24, 36]},
        decoder_output_stride=[4],
        aspp_with_separable_conv=True,
        decoder_use_separable_conv=True,
        multi_grid=None,
    ),
    # the paper's Cityscapes backbone (Table 7); its decoder taps entry_flow/block3 (feature_extractor.py)
    "xception71": dict(
        model_variant="xception_71",
        atrous_rates={16: [6, 12, 18], 8: [12, 24, 36]},
        decoder_output_stride=[4],
        aspp_with_separable_conv=True,
        decoder_use_separable_conv=True,
        multi_grid=None,
    ),
    "mobilenet_v2": dict(
        model_variant="mobilenet_v2",
        atrous_rates={16: None, 8: None},
        decoder_output_stride=None,
        aspp_with_separable_conv=True,
        decoder_use_separable_conv=True,
        multi_grid=None,
    ),
    "resnet_v1_101_beta": dict(
        model_variant="resnet_v1_101_beta",
        atrous_rates={16: [6, 12, 18], 8: [12, 24, 36]},
        decoder_output_stride=[4],
        aspp_with_separable_conv=False,
        decoder_use_separable_conv=False,
        multi_grid=[1, 2, 4],
    ),
}
CASES = [
    (network, stride, size)
    for network in NETWORKS
    for stride, size in ((16, "odd"), (16, "even"), (8, "odd"), (16, "aligned"))
]


def model_options(tf, network: str, output_stride: int, size: tuple[int, int]) -> ModelOptions:
    spec = NETWORKS[network]
    options = dict(_MODEL_OPTION_DEFAULTS, preprocessed_images_dtype=tf.float32)
    options.update({k: v for k, v in spec.items() if k != "atrous_rates"})
    return ModelOptions(
        outputs_to_num_classes={"semantic": NUM_CLASSES},
        crop_size=list(size),
        atrous_rates=spec["atrous_rates"][output_stride],
        output_stride=output_stride,
        **options,
    )


def case_settings(options: ModelOptions, size: tuple[int, int], eval_scales) -> dict:
    keys = (
        "model_variant", "output_stride", "atrous_rates", "decoder_output_stride", "multi_grid",
        "aspp_with_separable_conv", "decoder_use_separable_conv", "add_image_level_feature",
        "image_pooling_crop_size", "image_pooling_stride", "crop_size", "merge_method",
        "prediction_with_upsampled_logits",
    )
    settings = {key: getattr(options, key) for key in keys}
    settings.update(
        num_classes=NUM_CLASSES,
        input_size=list(size),
        eval_scales=eval_scales,
        add_flipped_images=bool(eval_scales),
        image_preprocessing="2/255*x - 1 (official _preprocess_zero_mean_unit_range)",
    )
    return settings


def fill_variables(tf, session) -> list[dict]:
    """Load ``official_value`` into every global variable; return the manifest."""
    manifest = []
    for variable in tf.global_variables():
        name = variable.op.name
        shape = tuple(variable.shape.as_list())
        variable.load(official_value(name, shape), session)
        manifest.append({"name": name, "shape": list(shape)})
    return manifest


def build_manifest(tf, model, network: str, output_stride: int) -> list[dict]:
    size = SIZES["odd"]
    graph = tf.Graph()
    with graph.as_default():
        images = tf.zeros([1, *size, 3], tf.float32)
        model.multi_scale_logits(
            images, model_options(tf, network, output_stride, size), image_pyramid=[1.0], is_training=False
        )
        return [{"name": v.op.name, "shape": v.shape.as_list()} for v in tf.global_variables()]


def run_case(tf, model, network: str, output_stride: int, size_name: str, with_ms: bool):
    size = SIZES[size_name]
    options = model_options(tf, network, output_stride, size)
    image = test_image(*size, IMAGE_SEEDS[size_name])
    graph = tf.Graph()
    with graph.as_default():
        images = tf.constant(image.astype(np.float32))
        logits = model.multi_scale_logits(images, options, image_pyramid=[1.0], is_training=False)
        fetches = {
            "logits": logits["semantic"][model.MERGED_LOGITS_SCOPE],
            "labels": model.predict_labels(images, options, image_pyramid=[1.0])["semantic"],
        }
        if with_ms:
            fetches["labels_ms_flip"] = model.predict_labels_multi_scale(
                images, options, eval_scales=MS_SCALES, add_flipped_images=True
            )["semantic"]
        with tf.Session(graph=graph) as session:
            manifest = fill_variables(tf, session)
            out = session.run(fetches)
    arrays = {
        "image": image,
        "logits": out["logits"].astype(np.float32),
        "labels": out["labels"].astype(np.int64),
        "settings": np.array(json.dumps(case_settings(options, size, MS_SCALES if with_ms else None))),
    }
    if with_ms:
        arrays["labels_ms_flip"] = out["labels_ms_flip"].astype(np.int64)
    return arrays, manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deeplab", type=Path, required=True, help="local copy of research/deeplab")
    parser.add_argument("--slim", type=Path, required=True, help="local copy of research/slim")
    parser.add_argument("--out", type=Path, required=True, help="fixture folder to write")
    parser.add_argument("--manifests-only", action="store_true", help="write the three manifests and stop")
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES),
                        help="only the cases of these sizes")
    args = parser.parse_args(argv)
    for flag, folder in (("--deeplab", args.deeplab / "model.py"), ("--slim", args.slim / "nets" / "mobilenet")):
        if not folder.exists():
            parser.error(f"{flag}: expected the official tree, {folder} is missing")
    tf, model, finder = install_official_code(args.deeplab.resolve(), args.slim.resolve())
    args.out.mkdir(parents=True, exist_ok=True)

    for network in args.networks:
        manifest = build_manifest(tf, model, network, 16)
        if manifest != build_manifest(tf, model, network, 8):
            raise SystemExit(f"{network}: the variables differ between output stride 16 and 8")
        path = args.out / f"{network}.manifest.json"
        path.write_text("[\n" + ",\n".join(json.dumps(v) for v in manifest) + "\n]\n")
        print(f"{path}: {len(manifest)} variables, {sum(int(np.prod(v['shape'])) for v in manifest):,} values")
    if args.manifests_only:
        return

    for network, stride, size_name in CASES:
        if network not in args.networks or size_name not in args.sizes:
            continue
        with_ms = stride == 16 and size_name in ("odd", "aligned")
        arrays, manifest = run_case(tf, model, network, stride, size_name, with_ms)
        if manifest != json.loads((args.out / f"{network}.manifest.json").read_text()):
            raise SystemExit(f"{network}: the case graph's variables differ from the manifest")
        path = args.out / f"{network}_os{stride}_{size_name}.npz"
        np.savez_compressed(path, **arrays)
        digest = hashlib.sha256(b"".join(arrays[k].tobytes() for k in sorted(arrays))).hexdigest()[:16]
        logits = arrays["logits"]
        print(
            f"{path}: logits {list(logits.shape)} |mean| {np.abs(logits).mean():.3g} std {logits.std():.3g}"
            f" max {np.abs(logits).max():.3g}; classes used {len(np.unique(arrays['labels']))}; sha256 {digest}"
        )
    print("patches applied:", {p[:40]: n for p, n in finder.patch_counts.items()})


if __name__ == "__main__":
    main()
