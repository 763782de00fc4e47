"""Networks: ptm's own builds of the classic ones, the CycleGAN generator, devices and precision."""
