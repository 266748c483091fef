"""Attention-mass masks and the Jaccard protocols on hand-made attention maps and masks."""

import numpy as np
import pytest
import torch

from common.datasets import build_dataset, voc2012_class_masks
from eval import jaccard as protocol
from eval.attention import head_masks, mass_mask, upsample
from eval.jaccard import VOID, aggregate, best_head_jaccard, ground_truth, image_scores, jaccard, thing_ids

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sixty_percent_mass_keeps_the_smallest_set():
    assert mass_mask(torch.tensor([0.5, 0.3, 0.15, 0.05])).tolist() == [True, True, False, False]
    # order does not matter, nor the scale: the entries are shares of the total
    assert mass_mask(torch.tensor([0.5, 1.5, 3.0, 5.0])).tolist() == [False, False, True, True]
    assert mass_mask(torch.tensor([0.6, 0.4])).tolist() == [True, False]  # exactly 60 % with one entry
    assert mass_mask(torch.tensor([0.1, 0.2, 0.3, 0.4]), mass=0.9).tolist() == [False, True, True, True]
    batched = mass_mask(torch.tensor([[0.05, 0.15, 0.3, 0.5], [0.7, 0.1, 0.1, 0.1]]))
    assert batched.tolist() == [[False, False, True, True], [True, False, False, False]]


def test_jaccard_ignores_void_in_intersection_and_union():
    pred = torch.zeros(4, 4, dtype=torch.bool)
    pred[:2, :] = True                      # 8 pixels
    target = torch.zeros(4, 4, dtype=torch.bool)
    target[:, :2] = True                    # 8 pixels, 4 shared
    assert jaccard(pred, target).item() == pytest.approx(4 / 12)
    void = torch.zeros(4, 4, dtype=torch.bool)
    void[0, 0] = True                       # shared pixel -> out of both
    void[3, 3] = True                       # in neither -> changes nothing
    void[0, 3] = True                       # prediction only -> out of the union
    assert jaccard(pred, target, void).item() == pytest.approx(3 / 10)
    heads = torch.stack([pred, target])     # leading dims are scored separately
    assert jaccard(heads, target, void).tolist() == pytest.approx([3 / 10, 1.0])


def test_best_head_per_object_then_mean_over_objects():
    gt = torch.zeros(4, 4, dtype=torch.long)
    gt[:2, :2] = 1
    gt[2:, 2:] = 2
    a = gt == 1                             # head A: object 1 exactly
    b = torch.zeros(4, 4, dtype=torch.bool)
    b[2:, 1:] = True                        # head B: object 2 plus 2 pixels -> J = 4 / 6
    score, table = best_head_jaccard(torch.stack([a, b]), gt)
    assert table.flatten().tolist() == pytest.approx([1.0, 0.0, 0.0, 4 / 6])
    assert score == pytest.approx((1.0 + 4 / 6) / 2)
    assert best_head_jaccard(torch.stack([a, b]), torch.full((4, 4), VOID)) == (None, None)


def hand_made():
    """2 heads on a 2 x 2 patch grid; ground truth 4 x 4 (each patch a 2 x 2 block)."""
    attn = torch.tensor([[[0.7, 0.1], [0.1, 0.1]],      # keeps the top-left patch (0.7 >= 0.6)
                         [[0.1, 0.2], [0.3, 0.4]]])     # keeps the bottom row (0.4 + 0.3)
    gt = torch.zeros(4, 4, dtype=torch.long)
    gt[:2, :2] = 1                                      # object 1: 4 px, the top-left block
    gt[2:, :2] = 2
    gt[2, 2] = 2                                        # object 2: 5 px, the largest
    gt[3, 3] = VOID                                     # inside head 2's mask and the max mask
    return attn, gt


def test_image_scores_on_hand_made_attention():
    attn, gt = hand_made()
    # default: void counted as in the published snippet; head 2 covers the void pixel -> 5 / 8
    counted = image_scores(attn, gt)
    assert counted["dino_best_head"] == counted["dino_best_head_void_count"] == pytest.approx((1 + 5 / 8) / 2)
    assert counted["dino_best_head_void_ignore"] == pytest.approx((1 + 5 / 7) / 2)
    s = image_scores(attn, gt, void_mode="ignore")
    # object 1: head 1 exact (1); object 2: head 2 = bottom rows, 8 px, one void -> 5 / 7
    assert s["dino_best_head"] == pytest.approx((1 + 5 / 7) / 2)
    assert s["per_head_sum"].tolist() == pytest.approx([1.0, 5 / 7])
    # union of head masks: 12 px, one void -> 11 valid; max over heads [[.7, .2], [.3, .4]]
    # keeps top-left and bottom-right blocks (0.7 / 1.6 + 0.4 / 1.6 >= 0.6), 8 px, one void.
    assert s["largest_class"]["head_union"] == pytest.approx(5 / 11)
    assert s["largest_class"]["head_max"] == pytest.approx(1 / 11)
    assert s["union_of_classes"]["head_union"] == pytest.approx(9 / 11)
    assert s["union_of_classes"]["head_max"] == pytest.approx(5 / 11)
    assert s["n_objects"] == 2 and s["best_head_of_largest"] == 1
    background_only = torch.where(gt == VOID, gt, torch.zeros_like(gt))
    assert image_scores(attn, background_only) is None


def test_masks_upsample_to_blocks_and_aggregate_in_percent():
    masks = head_masks(torch.tensor([[[0.7, 0.1], [0.1, 0.1]]]))
    up = upsample(masks, (4, 6))
    assert up.dtype == torch.bool and up.shape == (1, 4, 6)
    assert up[0].sum() == 6 and up[0, :2, :3].all()
    attn, gt = hand_made()
    s = {k: v for k, v in image_scores(attn, gt, void_mode="ignore").items() if k not in ("masks", "preds")}
    perfect = dict(s, dino_best_head=1.0, per_head_sum=torch.tensor([1.0, 1.0]), n_objects=1)
    agg = aggregate([s, perfect])
    assert agg["dino_best_head"] == pytest.approx(100 * ((1 + 5 / 7) / 2 + 1) / 2)
    assert agg["per_head"] == pytest.approx([100 * 2 / 3, 100 * (5 / 7 + 1) / 3])
    assert agg["n_images"] == 2 and agg["n_objects"] == 3
    a, b = (1 + 5 / 7) / 2, 1.0  # the two images' best-head Jaccards: se = |a - b| / 2 (std with n - 1, / √2)
    assert agg["dino_best_head_se"] == pytest.approx(100 * abs(a - b) / 2)
    assert aggregate([s])["dino_best_head_se"] is None  # one image: no spread to measure


def test_void_is_counted_as_in_the_published_snippet_on_the_voc_sample(shared_data):
    """2007_000063: dog (object 1, 27632 px), chair (object 2, 78930 px), 8714 void boundary pixels."""
    ds = build_dataset("voc2012", shared_data / "voc2012-sample", "train")
    gt, why = ground_truth(ds.get_mask(0))
    assert why is None and torch.unique(gt).tolist() == [0, 1, 2, VOID]
    chair_and_border = torch.stack([(gt == 2) | (gt == VOID)])  # a head that also covers the void border
    ignored, _ = best_head_jaccard(chair_and_border, torch.where(gt == 1, 0, gt), "ignore")
    counted, _ = best_head_jaccard(chair_and_border, torch.where(gt == 1, 0, gt), "count")
    assert ignored == 1.0 and counted == pytest.approx(78930 / (78930 + 8714))
    classes = voc2012_class_masks(ds)  # SegmentationClass: VOC class ids (9 chair, 12 dog), same pixels
    assert classes.mask_kind == "class"
    assert torch.unique(ground_truth(classes.get_mask(0))[0]).tolist() == [0, 9, 12, VOID]
    assert torch.equal(ground_truth(classes.get_mask(0))[0] == 9, gt == 2)


def test_coco_scores_things_only_with_the_right_skip_reasons(shared_data):
    mask = np.array([[0, 1, 1, 92], [200, 90, 91, 18]])  # unlabeled, person, stuff, tv... stuff, unused, dog
    gt, why = ground_truth(mask, range(1, 91))
    assert why is None and gt.tolist() == [[0, 1, 1, 0], [0, 90, 0, 18]]
    assert ground_truth(np.array([[0, 92], [150, 200]]), range(1, 91)) == (None, "no_object")
    assert ground_truth(np.full((2, 2), VOID), range(1, 91)) == (None, "no_mask")

    ds = build_dataset("coco", shared_data, "train")
    things = thing_ids(ds)
    assert things == list(range(1, 91)) and thing_ids(build_dataset("voc2012", shared_data / "voc2012-sample")) is None
    names = protocol.thing_names(ds)  # the things coco128's config.yaml names
    assert len(names) == 76 and names[1] == "person" and names[90] == "toothbrush" and 92 not in names
    reasons = {"no_mask": 0, "no_object": 0, "scored": 0}
    for i in range(len(ds)):
        raw = ds.get_mask(i)
        gt, why = ground_truth(raw, things)
        reasons[why or "scored"] += 1
        if gt is not None:
            kept = set(np.unique(gt.numpy())) - {0}
            assert kept <= set(things) and kept == {int(c) for c in np.unique(raw) if 1 <= c <= 90}
    assert reasons["no_mask"] == sum(1 for m in ds._masks if not m) == 28
    assert reasons["scored"] + reasons["no_object"] == 100 and reasons["no_object"] >= 1
