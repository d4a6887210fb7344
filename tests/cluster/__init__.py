"""Scale-out tests: the Ray runner on a local Ray cluster, and the routing it uses."""
