"""`glofnd-jax demo` (the functional example) runs end to end and prints a results table."""

from glofnd_jax import cli


def test_demo_runs_and_glofnd_flags_false_negatives(capsys):
  assert cli.main(["demo", "--num-samples", "512", "--epochs", "8", "--start", "2",
                   "--batch-size", "64", "--alpha", "0.05"]) == 0
  out = capsys.readouterr().out
  assert "kNN acc" in out and "glofnd" in out
  row = next(line for line in out.splitlines() if line.startswith("glofnd "))
  knn, precision = float(row.split()[1]), float(row.split()[2])
  assert knn > 0.5 and precision > 0.5, row


def test_cli_rejects_unknown_command(capsys):
  assert cli.main(["trian"]) == 2
  assert "unknown command 'trian'" in capsys.readouterr().err
