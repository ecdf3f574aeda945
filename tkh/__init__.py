"""tkh, the Talking Heads Kit: few-shot adversarial talking-head models (Zakharov et al., ICCV 2019).

The package is split by role, following the flow of data:
media → landmarks → (data → train) | (adapt → animate | puppet) → media.
"""

__version__ = "0.1.0"
