"""Reports on recorded studies: terminal tables and exports (tables), Plotly figures (figures),
the self-contained HTML report (html). Nothing here imports torch.

Files are written with hpsearch.files.atomic_write: complete or not at all, regular files only.
"""
