"""A module whose import needs a package that is not installed (for the loader test)."""

import no_such_package_wml  # noqa: F401
