"""The shared keys keep deeplab2's values and never collide."""

from deeplab_axial import common


def _keys(prefix: str) -> dict:
    return {k: v for k, v in vars(common).items() if k.startswith(prefix) and isinstance(v, str)}


def test_prediction_keys_match_deeplab2():
    assert common.PRED_PANOPTIC_KEY == 'panoptic_pred'
    assert common.PRED_SEMANTIC_KEY == 'semantic_pred'
    assert common.PRED_INSTANCE_KEY == 'instance_pred'
    assert common.PRED_INSTANCE_SCORES_KEY == 'instance_scores'
    assert common.PRED_SEMANTIC_PROBS_KEY == 'semantic_probs'
    assert common.PRED_CENTER_HEATMAP_KEY == 'center_heatmap'
    assert common.PRED_OFFSET_MAP_KEY == 'offset_map'


def test_keys_in_each_family_are_unique():
    for prefix in ('PRED_', 'GT_', 'CKPT_', 'KEY_'):
        values = list(_keys(prefix).values())
        assert len(values) == len(set(values)), prefix
