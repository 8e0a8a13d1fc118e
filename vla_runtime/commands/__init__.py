"""The commands behind ``vla-runtime``: check, demo, eval, replay, deploy, detector tools and
keyboard teleop, with their reports. They use the layers below (core, engines, graph); nothing
below imports from here."""
