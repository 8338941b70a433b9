"""Analysis: metrics, evaluation, screening, relationship matrices, figures."""
