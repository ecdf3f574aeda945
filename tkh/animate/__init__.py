"""Animate an adapted portrait: by a driving video, a landmark track, or a scripted sequence of edits.

G sees pose and expression only through the landmark image y (Zakharov et al. 2019, sec. 3.1), so every
driver is turned into a track of 68 landmarks in the portrait's crop pixels, then each frame is
G(y_t; ψ') (`AdaptedPortrait.render`).

Identity leakage and the normalisation (`transfer_motion`)
----------------------------------------------------------
Feeding the driver's own landmarks makes the portrait take the driver's face shape (jaw width, eye
distance, nose length): the paper's known weakness in cross-person reenactment (sec. 4.4). tkh transfers
only the driver's *motion*:

1. a reference frame of the driver is chosen (`reference`: its first frame, or "neutral" = the frame
   with the mouth most closed and the eyes most open), assumed to match the portrait's expression;
2. a similarity transform A (scale, rotation; Umeyama least squares on the rigid points: eye corners,
   nose bridge and base) maps the driver's reference face onto the portrait's landmarks;
3. frame t becomes  l_portrait + A · (l_driver(t) − l_driver(ref)):  the portrait's own shape plus the
   driver's displacement since the reference, rotated and scaled into the portrait's frame.

So the portrait keeps its face shape and position, and follows the driver's mouth, eyes, brows and head
motion.

A video or track driver needs a face in most frames (`tkh.landmarks.coverage`): detections that are not
face-shaped or jump in size are dropped, a driver with a face in fewer than `min_face_fraction` of its frames
(default half) is refused with one line naming the fraction found, and the frames without a face are
filled in (interpolated between the faces either side, held before the first and after the last);
`Track.coverage` and `animate`'s result say how many.

Scripted edits (`script_track`) come from `tkh.landmarks.edit` with cosine easing in and out of each
edit; the names are the table `SCRIPT_EDITS`.

Outputs go through `tkh.media.write_video` (mp4 and/or gif), labelled synthetic in their metadata;
`caption` also burns a visible label into every frame. Video drivers are streamed (frames are read,
rendered and written in small chunks); only the landmark track (T×68×2 floats) is held whole. A gif is
held in memory by its encoder, so use mp4 for long drivers.
"""

from tkh.animate.drivers import (
    DEFAULT_SCRIPT,
    SCRIPT_EDITS,
    Track,
    load_driver,
    load_track_file,
    script_controls,
    script_track,
    vetted,
)
from tkh.animate.motion import RIGID_IDS, reference_index, similarity, transfer_motion
from tkh.animate.render import animate, animate_from_cli, render_frames

__all__ = ["DEFAULT_SCRIPT", "RIGID_IDS", "SCRIPT_EDITS", "Track", "animate", "animate_from_cli", "load_driver",
           "load_track_file", "reference_index", "render_frames", "script_controls", "script_track", "similarity",
           "transfer_motion", "vetted"]
