// Video and audio outputs on the canvas: SaveVideo/SaveWEBM report their file under `images` with
// `animated` (ComfyUI's video preview), SaveAudio/PreviewAudio under `audio`. A video plays muted and
// looping, drawn into its node frame by frame; an audio file gets a small player bar on its node
// (click it to play or pause). Files come through /view, which answers range requests, so seeking works.

const VIDEO_EXT = /\.(mp4|webm|mkv|mov|m4v|ogv|avi)$/i;

export function isVideoFile(name) {
  return VIDEO_EXT.test(String(name || ""));
}

/** A muted looping <video> for `url`; `redraw` is called on each new frame (and once it can be drawn). */
export function createVideo(url, redraw) {
  const video = document.createElement("video");
  video.muted = true;
  video.loop = true;
  video.autoplay = true;
  video.playsInline = true;
  video.preload = "auto";
  const onFrame = () => {
    redraw();
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
  };
  video.addEventListener("loadeddata", () => {
    redraw();
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
    else video.addEventListener("timeupdate", redraw);
    video.play().catch(() => {});   // autoplay of a muted video is allowed; a refusal just shows frame 1
  });
  video.src = url;
  return video;
}

/** An <audio> for `url`; `redraw` is called when its state changes (loaded, playing, time, ended). */
export function createAudio(url, redraw) {
  const audio = new Audio();
  audio.preload = "auto";
  for (const name of ["loadedmetadata", "play", "pause", "timeupdate", "ended"]) audio.addEventListener(name, redraw);
  audio.src = url;
  return audio;
}

export const AUDIO_BAR_HEIGHT = 28;

function clock(seconds) {
  if (!Number.isFinite(seconds)) return "0:00";
  const s = Math.floor(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** The player bar of `audio` at (x, y), `w` wide: play/pause mark, progress, time, file name. */
export function drawAudioBar(ctx, audio, name, x, y, w) {
  const h = AUDIO_BAR_HEIGHT;
  ctx.save();
  ctx.fillStyle = "#1d1d1d";
  ctx.fillRect(x, y, w, h);
  ctx.fillStyle = "#ddd";
  if (audio.paused) {
    ctx.beginPath();
    ctx.moveTo(x + 9, y + 8);
    ctx.lineTo(x + 9, y + h - 8);
    ctx.lineTo(x + 21, y + h / 2);
    ctx.closePath();
    ctx.fill();
  } else {
    ctx.fillRect(x + 9, y + 8, 4, h - 16);
    ctx.fillRect(x + 16, y + 8, 4, h - 16);
  }
  const barX = x + 30, barW = Math.max(w - 120, 20);
  ctx.fillStyle = "#444";
  ctx.fillRect(barX, y + h / 2 - 2, barW, 4);
  const done = audio.duration > 0 ? Math.min(audio.currentTime / audio.duration, 1) : 0;
  ctx.fillStyle = "#4caf50";
  ctx.fillRect(barX, y + h / 2 - 2, barW * done, 4);
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  ctx.fillText(`${clock(audio.currentTime)} / ${clock(audio.duration)}`, barX + barW + 8, y + h / 2 + 4);
  ctx.fillStyle = "#999";
  ctx.fillText(String(name), x + 4, y + h + 13);
  ctx.restore();
}
