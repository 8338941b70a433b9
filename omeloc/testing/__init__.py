"""Test support shipped with the package (fault injection for crash-safety tests)."""
