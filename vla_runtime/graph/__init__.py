"""Graph plumbing: start a config's node graph as processes (supervisor), observe it from a tool or test
(probe), build it for ``ros2 launch`` (launch_support), and the private-graph harness that demo,
eval, detector tools, benchmarks and integration tests share (harness)."""
