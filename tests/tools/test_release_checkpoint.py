"""tools/release_checkpoint.py: the release holds the same weights without optimiser state, loads with
weights_only into a fresh model, and its printed sha256 is the file's."""

import hashlib

import torch

from configuration import Config
from modules.model_conclr import ConCLR_Vision
from runtime.checkpoint import load_checkpoint, load_weights, save_checkpoint
from tests.helpers import TINY_VISION, randomise, write_config
from tools import release_checkpoint


def test_release_keeps_weights_drops_optimiser_and_prints_its_sha256(tmp_path, capsys):
    config = Config(write_config(tmp_path / 'c.yaml', model={
        'name': 'modules.model_conclr.ConCLR_Vision', 'vision': dict(TINY_VISION, loss_weight=[1.0, 0.5, 0.5]),
        'projection': {'channels': 8}}))
    model = randomise(ConCLR_Vision(config))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 32, 128))['logits'].sum().backward()
    opt.step()  # Adam state: two moments per parameter, the bulk of a training checkpoint
    trained = save_checkpoint(tmp_path / 'run_0_7.pth', model, opt, iteration=7, best_cwr=0.25,
                              rng={'torch': torch.get_rng_state()})
    released = tmp_path / 'out' / 'model.pth'

    assert release_checkpoint.main(['--checkpoint', str(trained), '--output', str(released)]) == 0

    state = load_checkpoint(released)
    assert state['opt'] is None and 'rng' not in state
    assert (state['iteration'], state['best_cwr']) == (7, 0.25)
    assert released.stat().st_size < trained.stat().st_size / 2
    fresh = ConCLR_Vision(config)
    load_weights(fresh, released)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert hashlib.sha256(released.read_bytes()).hexdigest() in capsys.readouterr().out


def test_unreadable_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / 'notes.txt'
    bad.write_text('not a checkpoint')
    assert release_checkpoint.main(['--checkpoint', str(bad), '--output', str(tmp_path / 'r.pth')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'notes.txt' in err and err.count('\n') == 1
    assert not (tmp_path / 'r.pth').exists()
