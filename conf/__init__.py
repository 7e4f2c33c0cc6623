# The config files ship as the package `trainlab.conf`. Hydra imports it before composing: the types of
# trainlab's own keys (trainlab/config.py) are registered with its ConfigStore here.
from trainlab.core.config import register_schemas

register_schemas()
