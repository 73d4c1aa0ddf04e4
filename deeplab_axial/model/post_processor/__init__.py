"""Post-processing: raw head outputs -> panoptic, semantic and instance predictions."""
