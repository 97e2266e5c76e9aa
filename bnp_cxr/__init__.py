"""bnp-cxr: chest radiographs -> serum BNP / NT-proBNP (Huynh et al., MIDL 2022)."""

__version__ = "0.1.0"
