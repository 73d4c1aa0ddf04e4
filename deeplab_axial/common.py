"""Every string key the project shares, in one place.

Prediction, ground-truth, loss, checkpoint-item and TFExample keys keep deeplab2's values, so code and exported
SavedModels written against deeplab2 read ours unchanged. Import the constants; never retype the strings.
"""

# === Predictions (model outputs and post-processing outputs) ===
PRED_PANOPTIC_KEY = 'panoptic_pred'
PRED_SEMANTIC_KEY = 'semantic_pred'
PRED_INSTANCE_KEY = 'instance_pred'
PRED_INSTANCE_CENTER_KEY = 'instance_center_pred'
PRED_INSTANCE_SCORES_KEY = 'instance_scores'
PRED_SEMANTIC_PROBS_KEY = 'semantic_probs'
PRED_SEMANTIC_LOGITS_KEY = 'semantic_logits'
PRED_CENTER_HEATMAP_KEY = 'center_heatmap'
PRED_OFFSET_MAP_KEY = 'offset_map'
# Classification.
PRED_LOGITS_KEY = 'logits'
PRED_TOP5_CLASSES_KEY = 'top5_classes'
PRED_TOP5_PROBS_KEY = 'top5_probs'

# === Ground truth and training targets (outputs of the input pipeline) ===
IMAGE = 'image'
IMAGE_NAME = 'image_name'
IMAGE_HEIGHT = 'height'
IMAGE_WIDTH = 'width'
RESIZED_IMAGE = 'resized_image'
GT_SEMANTIC_KEY = 'semantic_gt'
GT_PANOPTIC_KEY = 'panoptic_gt'
GT_INSTANCE_CENTER_KEY = 'instance_center_gt'
GT_INSTANCE_REGRESSION_KEY = 'instance_regression_gt'
GT_IS_CROWD = 'is_crowd_gt'
GT_CLASS_LABEL_KEY = 'class_label_gt'
SEMANTIC_LOSS_WEIGHT_KEY = 'semantic_loss_weight'
CENTER_LOSS_WEIGHT_KEY = 'center_loss_weight'
REGRESSION_LOSS_WEIGHT_KEY = 'regression_loss_weight'
# Full-resolution labels kept for evaluation.
GT_SEMANTIC_RAW = 'semantic_raw'
GT_PANOPTIC_RAW = 'panoptic_raw'
GT_IS_CROWD_RAW = 'is_crowd_raw'
GT_SIZE_RAW = 'size_raw'
# Evaluation: image size after resize_to_range, before padding to the crop size.
GT_SIZE_RESIZED = 'size_resized'

# === Losses ===
SEMANTIC_LOSS = 'semantic_loss'
CENTER_LOSS = 'center_loss'
REGRESSION_LOSS = 'regression_loss'
CLASSIFICATION_LOSS = 'classification_loss'
TOTAL_LOSS = 'total_loss'

# === Checkpoint items ===
CKPT_ENCODER = 'encoder'
CKPT_DECODER = 'decoder'
CKPT_SEMANTIC_LAST_LAYER = 'semantic_last_layer'
CKPT_INSTANCE_LAST_LAYER = 'instance_last_layer'
CKPT_CLASSIFICATION_HEAD = 'classification_head'
CKPT_GLOBAL_STEP = 'global_step'
CKPT_OPTIMIZER = 'optimizer'
CKPT_TRAIN_ITERATOR = 'train_iterator'
CKPT_BACKBONE_OPTIMIZER = 'backbone_optimizer'

# === Encoder endpoints ===
RES2 = 'res2'
RES3 = 'res3'
RES4 = 'res4'
RES5 = 'res5'
STEM = 'stem'

# === TFExample feature keys ===
KEY_ENCODED_IMAGE = 'image/encoded'
KEY_IMAGE_FILENAME = 'image/filename'
KEY_IMAGE_FORMAT = 'image/format'
KEY_IMAGE_HEIGHT = 'image/height'
KEY_IMAGE_WIDTH = 'image/width'
KEY_IMAGE_CHANNELS = 'image/channels'
KEY_ENCODED_LABEL = 'image/segmentation/class/encoded'
KEY_LABEL_FORMAT = 'image/segmentation/class/format'
KEY_CLASS_LABEL = 'image/class/label'

# === Tasks and modes ===
TASK_PANOPTIC = 'panoptic'
TASK_CLASSIFICATION = 'classification'
MODE_TRAIN = 'train'
MODE_EVAL = 'eval'
MODE_TRAIN_AND_EVAL = 'train_and_eval'
MODE_CONTINUOUS_EVAL = 'continuous_eval'
MODES = (MODE_TRAIN, MODE_EVAL, MODE_TRAIN_AND_EVAL, MODE_CONTINUOUS_EVAL)
TRAIN_MODES = (MODE_TRAIN, MODE_TRAIN_AND_EVAL)  # the modes that train
