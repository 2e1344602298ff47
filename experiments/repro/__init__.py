"""The reproduction runner behind experiments/reproduce.py, one idea per module:

* `tables`: the tables and the published numbers (data);
* `specs`: a table's rows (which config, which pairs, what was reported);
* `jobs`: the plan (teacher and student jobs, their workdirs and command lines);
* `scheduler`: running the jobs;
* `report`: table.md / table.csv from the finished runs.
"""
