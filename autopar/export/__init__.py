"""export"""

from .engines import (  # noqa: F401
    ENGINES,
    TIGHT_FRACTION,
    command,
    config_yaml,
    export_text,
    launch_from_plan,
    launch_section,
)
