import os

# Eight fake CPU devices for the mesh tests; must be set before JAX is imported. Unsharded code
# still runs on device 0 alone.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
