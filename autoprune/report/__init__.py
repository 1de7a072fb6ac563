"""What a search's results read as: the report's table, CSV and JSON, the plot, the notes under the front.

``render`` (table, CSV, JSON document), ``plot`` (the PNG), ``notes`` (one-line findings), ``summary`` (one trial).
"""
