# sh taken_by_root_setup.sh HOME NAME UID GID PYTHON LIB HOLD, as root: a tmpfs of
# its own (no other lock on that file system) mounted on HOME in this mount
# namespace, the user's, with the folder HOME/.local/share/NAME root's as a past
# `sudo -E app` left it; with HOLD=1, a root primary of it still runs
# (held_primary.py). Then taken_by_root.py as the user; exits with its status.
# LIB holds tcbon.py and a copy of this folder that the user can read.
H=$1 NAME=$2 U=$3 G=$4 PY=$5 LIB=$6 HOLD=$7
D="$H/.local/share/$NAME"
mount -t tmpfs -o mode=0755 tcbon-home "$H" && mkdir -p "$D" && chmod 700 "$D" &&
    chown "$U:$G" "$H" "$H/.local" "$H/.local/share" || exit 90
holder=
trap '[ -z "$holder" ] || kill "$holder"' EXIT
if [ "$HOLD" = 1 ]; then
    PYTHONPATH="$LIB" "$PY" "$LIB/children/held_primary.py" "$NAME" "$D" & holder=$!
    i=0
    until [ -e "$D/held" ]; do i=$((i+1)); [ $i -lt 3000 ] || exit 91; sleep 0.01; done
fi
setpriv --reuid="$U" --regid="$G" --clear-groups env -i HOME="$H" PATH=/usr/bin:/bin \
    PYTHONPATH="$LIB" "$PY" "$LIB/children/taken_by_root.py" "$NAME"
