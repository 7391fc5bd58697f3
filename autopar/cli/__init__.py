"""cli"""

from .main import (  # noqa: F401
    EXIT_INFEASIBLE,
    Interrupted,
    Interruptible,
    Progress,
    check,
    main,
    solve,
)
