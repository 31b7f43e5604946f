"""lmserve's own routes: health, slots, the prediction log, metrics."""
