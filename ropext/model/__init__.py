"""Loading models, reading their rotary layout, and applying a `RopeScaling` to them."""
