"""Reading VOC + SBD, trainaug, the paper's augmentation, determinism, resumable loading, errors."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision import tv_tensors

from datamodules import synthetic, voc
from datamodules.dataset import EpochSampler, SegmentationDataset, ShardSampler, pad_collate
from datamodules.transforms import RandomScaleCrop, eval_transform, mean_pixel, train_transform
from datamodules.voc import DatasetError, Sample, check_tree, decode_sample, list_split, voc_dir
from datamodules.voc_datamodule import VOCDataModule


def test_split_sizes_and_trainaug_computation(voc_root):
    train, val, trainaug = (list_split(voc_root, s) for s in ("train", "val", "trainaug"))
    assert (len(train), len(val), len(trainaug)) == (30, 16, 56)
    ids = [s.image.stem for s in trainaug]
    assert ids == sorted(set(ids))  # SBD re-annotations of VOC train images are counted once
    assert not set(ids) & {s.image.stem for s in val}  # every VOC val image excluded, SBD's copies too
    sbd_lists = voc_root / "benchmark_RELEASE" / "dataset"
    sbd_ids = set((sbd_lists / "train.txt").read_text().split()) | set((sbd_lists / "val.txt").read_text().split())
    assert set(ids) == ({s.image.stem for s in train} | sbd_ids) - {s.image.stem for s in val}
    # masks: VOC's own annotation where it has one, SBD's .mat otherwise
    by_id = {s.image.stem: s for s in trainaug}
    assert by_id["2007_000000"].mask.suffix == ".png" and by_id["2008_000000"].mask.suffix == ".mat"


def test_segmentation_class_aug_folder_is_used_without_sbd(voc_copy):
    shutil.rmtree(voc_copy / "benchmark_RELEASE")
    aug = voc_dir(voc_copy) / "SegmentationClassAug"
    aug.mkdir()
    for stem in ("2007_000001", "2007_000031", "2009_000001"):  # train, val (must be excluded), extra
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(aug / f"{stem}.png")
    images = voc_dir(voc_copy) / "JPEGImages"
    shutil.copy(images / "2007_000001.jpg", images / "2009_000001.jpg")  # a listed id has its image
    ids = [s.image.stem for s in list_split(voc_copy, "trainaug")]
    assert "2009_000001" in ids and "2007_000031" not in ids and len(ids) == 31


def test_palette_png_and_mat_decode_to_the_same_classes(voc_root):
    image_id = "2007_000000"  # in VOC train and SBD train
    voc = voc_dir(voc_root)
    _, png = decode_sample(Sample(voc / "JPEGImages" / f"{image_id}.jpg", voc / "SegmentationClass" / f"{image_id}.png"))
    sbd = voc_root / "benchmark_RELEASE" / "dataset"
    _, mat = decode_sample(Sample(sbd / "img" / f"{image_id}.jpg", sbd / "cls" / f"{image_id}.mat"))
    inside = png != 255
    assert inside.float().mean() > 0.9 and (png == 255).any()  # VOC-style boundary band
    assert torch.equal(png[inside], mat[inside])
    assert set(mat.unique().tolist()) > {0}
    # the palette PNG holds indices, not colours: PIL agrees with our decoder
    assert np.array_equal(np.array(Image.open(voc / "SegmentationClass" / f"{image_id}.png")), png[0].numpy())


def test_generator_same_seed_same_bytes(tmp_path):
    a = synthetic.generate(tmp_path / "a", seed=3, n_voc_train=3, n_voc_val=2, n_sbd_only=3)
    b = synthetic.generate(tmp_path / "b", seed=3, n_voc_train=3, n_voc_val=2, n_sbd_only=3)
    c = synthetic.generate(tmp_path / "c", seed=4, n_voc_train=3, n_voc_val=2, n_sbd_only=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".jpg")


def _labelled_pair(h=200, w=300):
    """An image whose colour encodes its label in big blocks, to check image and mask move together."""
    mask = torch.zeros(1, h, w, dtype=torch.uint8)
    mask[:, : h // 2, : w // 3] = 1
    mask[:, h // 2 :, w // 3 : 2 * w // 3] = 7
    mask[:, :, 2 * w // 3 :] = 15
    image = (mask.repeat(3, 1, 1) * 12).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def test_augmentation_invariants_over_many_draws():
    transform = train_transform(crop_size=129, normalization="imagenet")
    image, mask = _labelled_pair()
    torch.manual_seed(0)
    flips = 0
    for _ in range(60):
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (3, 129, 129) and out_mask.shape == (1, 129, 129)
        assert set(out_mask.unique().tolist()) <= {0, 1, 7, 15, 255}
        assert out_image.dtype == torch.uint8  # normalised on the device, not in the loader
        # read the label back from the colour of channel 0: it matches the mask
        raw = out_image[0].float()
        labelled = out_mask[0] != 255
        agree = (raw[labelled] / 12).round() == out_mask[0][labelled].float()
        assert agree.float().mean() > 0.9  # only resampled block borders disagree; a lone flip would give ~1/3
        # padding: 255 in the mask, the mean pixel (normalised to 0 on the device) in the image
        padded = out_mask[0] == 255
        if padded.any():
            assert (out_image[:, padded] == torch.tensor(mean_pixel("imagenet"))[:, None]).all()
        flips += bool(out_mask[0, 0, 0] == 15)  # the class-15 stripe is on the right unless flipped
    assert 0 < flips < 60


def test_scale_is_drawn_from_the_range_and_official_steps():
    crop = RandomScaleCrop(64, (0.5, 2.0))
    scales = []
    for seed in range(300):
        torch.manual_seed(seed)
        scales.append(crop.make_params([tv_tensors.Image(torch.zeros(3, 100, 80, dtype=torch.uint8))])["scale"])
    assert 0.5 <= min(scales) < 0.6 and 1.9 < max(scales) <= 2.0
    stepped = RandomScaleCrop(64, (0.5, 2.0), scale_step=0.25)
    drawn = {stepped._draw_scale() for _ in range(300)}
    assert drawn == {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0}


def test_small_scale_pads_bottom_right_with_mean_pixel_and_255():
    image, mask = _labelled_pair(100, 80)
    crop = RandomScaleCrop(129, (0.5, 0.5), image_fill=mean_pixel("imagenet"))
    out_image, out_mask = crop(image, mask)
    assert out_mask.shape[-2:] == (129, 129)
    assert (out_mask[0, :50, :40] != 255).all() and (out_mask[0, 50:, :] == 255).all() and (out_mask[0, :, 40:] == 255).all()
    assert out_image[:, 60, 60].tolist() == mean_pixel("imagenet")


def _first_samples(dataset, epoch, workers, n=6):
    sampler = EpochSampler(len(dataset), seed=0)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers)
    batches = []
    for i, batch in enumerate(loader):
        batches.append(batch)
        if i + 1 == n // 2:
            break
    return batches


def test_augmentation_depends_only_on_seed_epoch_index(voc_root):
    dataset = SegmentationDataset(list_split(voc_root, "trainaug"), train_transform(97), seed=0)
    zero = _first_samples(dataset, epoch=1, workers=0)
    two = _first_samples(dataset, epoch=1, workers=2)
    for (a_img, a_mask), (b_img, b_mask) in zip(zero, two):
        assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)
    assert torch.equal(dataset[(5, 1)][0], dataset[(5, 1)][0])
    assert not torch.equal(dataset[(5, 1)][0], dataset[(5, 2)][0])
    other_epoch = _first_samples(dataset, epoch=2, workers=0)
    assert not torch.equal(zero[0][0], other_epoch[0][0])


@pytest.mark.parametrize("taken", [5, 14])
def test_loader_state_resumes_with_the_same_batches(voc_root, taken):
    """Saved mid-epoch: the rest of the epoch. Saved after the epoch's last batch (as Lightning leaves the
    loader, before it asks for a batch past the end): the next epoch, not an empty replay of this one."""
    dataset = SegmentationDataset(list_split(voc_root, "trainaug"), train_transform(65), seed=0)

    def loader(epoch):
        sampler = EpochSampler(len(dataset), seed=0, batch_size=4)
        sampler.set_epoch(epoch)
        return StatefulDataLoader(dataset, batch_size=4, sampler=sampler, drop_last=True, num_workers=2)

    epoch3, epoch4 = ([m for _, m in loader(epoch)] for epoch in (3, 4))
    assert len(epoch3) == 14
    first = loader(3)
    iterator = iter(first)
    for _ in range(taken):
        next(iterator)
    state = first.state_dict()
    resumed = loader(0)  # the saved state, not the sampler's epoch at construction, decides
    resumed.load_state_dict(state)
    rest = [m for _, m in resumed]
    expected = epoch3[taken:] or epoch4
    assert len(rest) == len(expected) > 0
    assert all(torch.equal(a, b) for a, b in zip(rest, expected))


def test_sampler_yields_whole_batches_of_one_permutation_per_epoch():
    ranks = [EpochSampler(23, seed=1, rank=r, world_size=2, batch_size=4) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(2)
    keys = [list(sampler) for sampler in ranks]
    assert [len(k) for k in keys] == [len(sampler) for sampler in ranks] == [8, 8]
    indices = [i for k in keys for i, _ in k]
    assert len(set(indices)) == 16 and {e for k in keys for _, e in k} == {2}
    ranks[0].set_epoch(3)
    assert [i for i, _ in ranks[0]] != [i for i, _ in keys[0]]


def test_full_image_validation_keeps_every_image_and_size(voc_root):
    samples = list_split(voc_root, "val")
    dataset = SegmentationDataset(samples, eval_transform())
    assert dataset[0][0].dtype == torch.uint8
    sizes = [tuple(decode_sample(s)[1].shape[-2:]) for s in samples]
    assert len(set(sizes)) > 1
    seen = [tuple(m.shape[-2:]) for _, m in DataLoader(dataset, batch_size=1)]
    assert seen == sizes
    # two processes: a partition, nothing dropped or repeated
    shards = [ShardSampler(len(dataset), rank, 2).indices for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(len(dataset)))
    # padded batches: padding labelled 255, the original pixels untouched
    fill = mean_pixel("imagenet")
    images, masks = pad_collate([dataset[0], dataset[1]], image_fill=fill)
    h1, w1 = dataset[1][1].shape
    assert torch.equal(masks[1, :h1, :w1], dataset[1][1]) and torch.equal(images[1, :, :h1, :w1], dataset[1][0])
    assert (masks[1, h1:, :] == 255).all() and (masks[1, :, w1:] == 255).all()
    # image padding is the mean pixel, which the module's normalisation maps to 0
    outside = torch.ones(2, *images.shape[-2:], dtype=torch.bool)
    for b, (image, _) in enumerate([dataset[0], dataset[1]]):
        outside[b, : image.shape[-2], : image.shape[-1]] = False
    assert outside.any() and (images.permute(1, 0, 2, 3)[:, outside] == torch.tensor(fill)[:, None]).all()


def test_datamodule_end_to_end(voc_root):
    dm = VOCDataModule(root=str(voc_root), crop_size=65, batch_size=4, num_workers=0)
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 65, 65) and images.dtype == torch.uint8
    assert masks.shape == (4, 65, 65)
    assert len(dm.val_dataloader()) == 16


def test_missing_root_and_split_files_are_named(tmp_path, voc_copy):
    with pytest.raises(DatasetError, match=r"VOCdevkit/VOC2012.*host.robots.ox.ac.uk"):
        list_split(tmp_path / "nowhere", "train")
    shutil.rmtree(voc_copy / "benchmark_RELEASE")
    with pytest.raises(DatasetError, match=r"needs SBD at .*benchmark_RELEASE/dataset"):
        list_split(voc_copy, "trainaug")
    (voc_dir(voc_copy) / "ImageSets" / "Segmentation" / "train.txt").unlink()
    with pytest.raises(DatasetError, match=r"missing split file .*train.txt"):
        list_split(voc_copy, "train")


def _corrupt(voc_copy, kind):
    voc = voc_dir(voc_copy)
    if kind == "size":
        path = voc / "SegmentationClass" / "2007_000003.png"
        Image.fromarray(np.zeros((10, 10), np.uint8), mode="P").save(path)
    elif kind == "label":
        path = voc / "SegmentationClass" / "2007_000003.png"
        mask = np.array(Image.open(path))
        mask[0, 0] = 42
        png = Image.fromarray(mask, mode="P")
        png.putpalette(synthetic.voc_palette())
        png.save(path)
    elif kind == "jpeg":
        path = voc / "JPEGImages" / "2007_000003.jpg"
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "png":
        path = voc / "SegmentationClass" / "2007_000003.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    else:
        path = voc_copy / "benchmark_RELEASE" / "dataset" / "cls" / "2008_000003.mat"
        path.write_bytes(b"not a mat file")
    return path


@pytest.mark.parametrize("kind,message", [("size", "expected the same height and width"),
                                          ("label", r"labels \[42\] outside"), ("jpeg", "cannot decode the image"),
                                          ("png", "cannot decode the mask"), ("mat", "cannot read the SBD mask")])
def test_bad_files_fail_in_the_main_process_naming_the_file(voc_copy, kind, message, capsys):
    path = _corrupt(voc_copy, kind)
    dm = VOCDataModule(root=str(voc_copy), crop_size=65, batch_size=4, num_workers=2, persistent_workers=False)
    dm.setup("fit")
    with pytest.raises(Exception) as err:  # DataLoader re-raises the worker's DatasetError here
        for _ in dm.train_dataloader():
            pass
    assert str(path) in str(err.value) and err.match(message)
    assert check_tree(voc_copy) == 1
    err = capsys.readouterr().err
    assert str(path) in err and re.search(message, err)


def test_check_command_prints_counts(voc_root, voc_copy, capsys):
    """`python -m datamodules.voc --check ROOT`, in this process."""
    assert voc.main(["--check", str(voc_root)]) == 0
    out = capsys.readouterr().out
    assert "train: 30 samples OK" in out and "val: 16" in out and "trainaug: 56" in out
    path = _corrupt(voc_copy, "jpeg")
    assert voc.main(["--check", str(voc_copy)]) == 1
    assert str(path) in capsys.readouterr().err


def test_sbd_mat_layout_matches_the_distribution(voc_root):
    mat = scipy.io.loadmat(str(voc_root / "benchmark_RELEASE/dataset/cls/2008_000001.mat"), squeeze_me=True,
                           struct_as_record=False)
    assert mat["GTcls"].Segmentation.dtype == np.uint8 and mat["GTcls"].Segmentation.ndim == 2
