"""A plain PyTorch training loop with babysit added: the lines marked ``# babysit``.

An MLP on scikit-learn's bundled 8x8 digits (an MNIST look-alike that needs no download).
Run it, then look at what was recorded::

    python examples/train_mnist_like.py
    babysit runs
    python -c 'import monitor; print(monitor.load_run("<run id>").scalars.tail())'
"""
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from trainer_hooks import EarlyStopping, watch  # babysit

torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # 64 pixels in 0..1
y = torch.tensor(digits.target)
x_train, y_train, x_val, y_val = x[:1500], y[:1500], x[1500:], y[1500:]

model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
# lr=0.01: at 0.1 this small run is chaotic, and the last bit of float rounding (the thread
# count, the CPU's vector width) decides where it stops and whether it overfits first.
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

stopping = EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)  # babysit
with watch(model, optimizer, run="digits-mlp", config={"lr": 0.01}, early_stopping=stopping) as mon:  # babysit
    for epoch in range(30):
        for idx in torch.randperm(len(y_train)).split(32):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mon.log(loss=loss)  # babysit: a tensor is fine, no sync
            if mon.should_stop:  # babysit
                break
        with torch.no_grad():
            logits = model(x_val)
        val_loss = F.cross_entropy(logits, y_val).item()
        val_acc = (logits.argmax(1) == y_val).float().mean().item()
        mon.log(val_loss=val_loss, val_acc=val_acc, epoch=epoch)  # babysit
        print(f"epoch {epoch}: val loss {val_loss:.3f}, val acc {val_acc:.1%}")
        if mon.should_stop:  # babysit
            break

if mon.stop_reason:  # babysit: why it stopped early (the best weights are back in the model)
    print(f"stopped early: {mon.stop_reason.message}")
for flag in mon.flags:  # babysit: what the detectors saw (also printed as they came)
    print(f"flag: {flag.kind} {flag.layer or ''}: {flag.message}")
print(f"stored as {mon.run_id} in {mon.store_path}")
