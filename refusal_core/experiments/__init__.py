"""Experiments: whole comparisons run end to end and saved as one result file (many_directions:
one DIM direction against searched sets of SOM, cluster and optimized directions)."""
